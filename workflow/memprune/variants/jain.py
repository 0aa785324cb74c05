"""Jain et al. (CVPR 2025): inference-time mitigation. Guidance is withheld (static: 0, opposite: negative,
dynamic: 1) until the transition point, then the sampling guidance (`memprune.mitigate.jain.guided_sample`, where
the comparison with their code is). Parameters: mode and each mode's transition_t / guidance_before (config
mitigation.jain)."""

from __future__ import annotations

from memprune.errors import InputError
from memprune.variants import Variant
from memprune.mitigate.jain import MODES

DEFAULTS = {"mode": "static", "static": {"transition_t": 500.0, "guidance_before": 0.0},
            "opposite": {"transition_t": 650.0, "guidance_before": -2.0}, "dynamic": {"guidance_before": 1.0}}


def schedule(params: dict) -> dict:
    """{mode, transition_t, guidance_before} of the configured mode, its block over the defaults."""
    mode = params.get("mode", "static")
    if mode not in MODES:
        raise InputError(f"config key mitigation.jain.mode: {mode!r} is not one of {list(MODES)}")
    block = {**DEFAULTS[mode], **(params.get(mode) or {})}
    return {"mode": mode, "transition_t": float(block.get("transition_t", 0.0)),
            "guidance_before": float(block["guidance_before"])}


def _generate(pipe, prompts, seeds, cfg, params, progress=False):
    from memprune.mitigate.jain import guided_sample
    from memprune.sampling import text_embeddings

    return guided_sample(pipe, text_embeddings(pipe, list(prompts)), list(seeds), cfg, **schedule(params))


def _generate_embeds(pipe, embeds, seeds, cfg, params, progress=False):
    from memprune.mitigate.jain import guided_sample

    return guided_sample(pipe, embeds, list(seeds), cfg, **schedule(params))


VARIANT = Variant(name="jain", label="Jain et al. (inference-time)", colour="tab:cyan", generate=_generate,
                  generate_embeds=_generate_embeds,
                  attacked_as="none",  # the UNet is the unedited one: the recovery attack's searches are its
                  description="Jain et al.'s guidance withheld inside the attraction basin (static, opposite or "
                              "dynamic transition point)",
                  default_params=DEFAULTS)
