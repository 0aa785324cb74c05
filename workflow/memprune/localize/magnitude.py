"""Control: the top-k |W| of each row of ff.net.2, no activations. Every subset gets the same mask, so its IOU
is 1: how much of a method's overlap the weights alone would explain."""

from __future__ import annotations

from memprune.localize import Localizer, pack, weight_mask_set
from memprune.localize.wanda_scores import k_per_row, top_k_per_row


def locate(inputs, params):
    union = {layer: pack(top_k_per_row(w.abs(), k_per_row(params["sparsity"], w.shape[1])).numpy())
             for layer, w in inputs.weights.items()}
    return weight_mask_set(inputs, union, None, {})


LOCALIZER = Localizer(name="magnitude", description="control: the top-k |W| of each row of ff.net.2, no activations "
                                                   "(the same mask for every subset)",
                      locate=locate, defaults={"sparsity": 0.01},
                      param_docs={"sparsity": "share of each row's largest |W| selected (no steps, so no tau)"},
                      uses_timesteps=False)
