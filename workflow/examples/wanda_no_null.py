"""Wanda without the null prompt: per (layer, step) the top-k Wanda scores |W| * ||X_P|| of each row of ff.net.2
(equation 5 alone, no `> S_null` test of equation 6), united over the first tau steps. An ablation: how much of
Wanda's masks the null prompt's contrast decides. The example of docs/methods.md, "Adding a localizer"."""

from __future__ import annotations

import numpy as np

from memprune.localize import Localizer, pack, weight_mask_set
from memprune.localize.wanda_packed import union_over_timesteps_packed
from memprune.localize.wanda_scores import k_per_row, memorized_score, top_k_per_row


def locate(inputs, params):
    import torch

    per_step, union = {}, {}
    for layer, w in inputs.weights.items():
        k = k_per_row(params["sparsity"], w.shape[1])
        sums = torch.from_numpy(inputs.memorized[layer]).float()  # (step, in): sum over prompts and tokens of x^2
        per_step[layer] = np.stack([pack(top_k_per_row(memorized_score(w, s), k).numpy()) for s in sums])
        union[layer] = union_over_timesteps_packed(per_step[layer], params["tau"])
    return weight_mask_set(inputs, union, per_step, {})


LOCALIZER = Localizer(
    name="wanda_no_null", description="Wanda's top-k scores per row of ff.net.2 without the null prompt's test, "
                                      "united over the first tau steps",
    locate=locate, defaults={"sparsity": 0.01, "tau": 10},
    param_docs={"sparsity": "share of each row's input features selected per step",
                "tau": "denoising steps, from the first (noisiest), whose masks are united into the edit"},
    statistics=("ffn_input_sumsq",))
