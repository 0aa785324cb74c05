"""Control: the activation contrast alone, |W| ignored. Per (layer, timestep) the k input features whose norm
exceeds the null prompt's the most, ||X_P,j|| - sqrt(|P|) ||x_null,j|| > 0 (the two norms of eqs. 4 and the
null score), selected in every row; union over the first tau steps."""

from __future__ import annotations

import numpy as np

from memprune.localize import Localizer, pack, weight_mask_set
from memprune.localize.wanda_packed import union_over_timesteps_packed
from memprune.localize.wanda_scores import k_per_row, top_k_per_row


def locate(inputs, params):
    import torch
    per_step, union = {}, {}
    for layer, w in inputs.weights.items():
        out_dim, n = w.shape
        k = k_per_row(params["sparsity"], n)
        mem = torch.from_numpy(inputs.memorized[layer]).float().sqrt()
        null = (inputs.n_prompts * torch.from_numpy(inputs.null[layer]).float()).sqrt()
        contrast = mem - null  # (step, in)
        columns = top_k_per_row(contrast, k) & (contrast > 0)  # one "row" per step: the same in every row of W
        packed = pack(columns.numpy())  # (step, ceil(in / 8)), packed once and broadcast over W's rows
        per_step[layer] = np.ascontiguousarray(np.broadcast_to(packed[:, None, :],
                                                               (packed.shape[0], out_dim, packed.shape[1])))
        union[layer] = union_over_timesteps_packed(per_step[layer], params["tau"])
    return weight_mask_set(inputs, union, per_step, {})


LOCALIZER = Localizer(
    name="activation", description="control: per step the k input features of ff.net.2 whose norm beats the null "
                                   "prompt's the most, in every row (|W| ignored); union over tau steps",
    locate=locate, defaults={"sparsity": 0.01, "tau": 10},
    param_docs={"sparsity": "share of the input features selected per step (the same in every row)",
                "tau": "denoising steps, from capture's first UNet call, whose per-step masks are united"},
    statistics=("ffn_input_sumsq",))
