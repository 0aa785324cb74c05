"""Wen et al. (ICLR 2024): inference-time mitigation. Each (prompt, seed)'s text embedding is optimised so the
text-conditional part of the first step's prediction becomes small, then the image is generated from it
(`memprune.mitigate.wen.wen_mitigated_embeddings`). Parameters: lr, max_iters, target_loss (config mitigation.wen)."""

from __future__ import annotations

import time

import numpy as np

from memprune.variants import Variant
from memprune.mitigate.wen import WEN_TARGET_LOSS


def _generate(pipe, prompts, seeds, cfg, params, progress=False):
    import torch

    from memprune.sampling import generate
    from memprune.mitigate.wen import wen_mitigated_embeddings

    lr, max_iters = params.get("lr", 0.05), params.get("max_iters", 10)
    target = params.get("target_loss", WEN_TARGET_LOSS)
    start = time.perf_counter()
    embeds, info = wen_mitigated_embeddings(pipe, prompts, seeds, cfg, lr=lr, max_iters=max_iters,
                                            target_loss=target, progress=progress)
    if str(pipe.unet.device).startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    images = generate(pipe, prompts, seeds, cfg, prompt_embeds=embeds, progress=progress)
    return images, {"iterations": np.asarray(info["iterations"]), "converged": np.asarray(info["converged"]),
                    "initial_loss": np.asarray(info["initial_loss"]), "final_loss": np.asarray(info["final_loss"]),
                    "wen_seconds": seconds, "wen_lr": lr, "wen_max_iters": max_iters, "wen_target_loss": target}


def _generate_embeds(pipe, embeds, seeds, cfg, params, progress=False):
    from memprune.sampling import generate
    from memprune.mitigate.wen import wen_mitigated_embeddings

    mitigated, info = wen_mitigated_embeddings(
        pipe, [""] * len(seeds), seeds, cfg, lr=params.get("lr", 0.05), max_iters=params.get("max_iters", 10),
        target_loss=params.get("target_loss", WEN_TARGET_LOSS), progress=progress, init_embeds=embeds)
    return generate(pipe, [""] * len(seeds), seeds, cfg, prompt_embeds=mitigated, progress=progress), info


VARIANT = Variant(name="wen", label="Wen et al. (inference-time)", colour="tab:green", generate=_generate,
                  generate_embeds=_generate_embeds,
                  attacked_as="none",  # the recovery attack's searches are the unedited model's
                  description="Wen et al.'s text-embedding optimisation at the first step, then sampling",
                  default_params={"lr": 0.05, "max_iters": 10, "target_loss": WEN_TARGET_LOSS})
