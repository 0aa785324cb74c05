"""The paper's rule (equations 2, 4-7; `memprune.localize.wanda_scores`): per (layer, timestep) the top-k Wanda scores
of each row of ff.net.2 that also beat the null prompt's, and their union over the first tau steps."""

from __future__ import annotations

from memprune.localize import Localizer, weight_mask_set
from memprune.localize.wanda_packed import memorized_masks_packed, union_over_timesteps_packed


def locate(inputs, params):
    import torch
    per_step, union = {}, {}
    for layer, w in inputs.weights.items():
        per_step[layer] = memorized_masks_packed(w, torch.from_numpy(inputs.memorized[layer]).float(),
                                                 torch.from_numpy(inputs.null[layer]).float(), inputs.n_prompts,
                                                 params["sparsity"])
        union[layer] = union_over_timesteps_packed(per_step[layer], params["tau"])
    return weight_mask_set(inputs, union, per_step, {})


LOCALIZER = Localizer(
    name="wanda", description="the paper's rule: Wanda scores |W| * ||X|| of ff.net.2, top-k per row beating the null "
                              "prompt, united over the first tau steps",
    locate=locate, defaults={"sparsity": 0.01, "tau": 10},
    param_docs={"sparsity": "share of each ff.net.2 row's input features selected per step, k = floor(sparsity x in)",
                "tau": "denoising steps, from capture's first (noisiest) UNet call, whose per-step masks are united "
                       "into the edit (at most the captured steps)"},
    statistics=("ffn_input_sumsq",))
