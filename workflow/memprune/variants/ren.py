"""Ren et al. (ECCV 2024): inference-time mitigation. Each image's first-step cross-attention entropy is scored
(their detector); flagged images are generated with the beginning token's cross-attention logits rescaled by c1
and the padding masked (`memprune.mitigate.ren.ren_generate`, where the comparison with their code is). Parameters:
c1, threshold, detect, detect_layers, mask_padding (config mitigation.ren)."""

from __future__ import annotations

from memprune.variants import Variant
from memprune.mitigate.ren import C1


def _kwargs(params: dict) -> dict:
    return {"c1": params.get("c1", C1), "threshold": params.get("threshold", 0.0), "detect": params.get("detect", True),
            "layers": params.get("detect_layers"), "mask_padding": params.get("mask_padding", True)}


def _generate(pipe, prompts, seeds, cfg, params, progress=False):
    from memprune.mitigate.ren import ren_generate

    return ren_generate(pipe, list(seeds), cfg, prompts=list(prompts), **_kwargs(params))


def _generate_embeds(pipe, embeds, seeds, cfg, params, progress=False):
    from memprune.mitigate.ren import ren_generate

    return ren_generate(pipe, list(seeds), cfg, embeds=embeds, **_kwargs(params))


VARIANT = Variant(name="ren", label="Ren et al. (inference-time)", colour="tab:olive", generate=_generate,
                  generate_embeds=_generate_embeds,
                  attacked_as="none",  # the UNet is the unedited one: the recovery attack's searches are its
                  description="Ren et al.'s cross-attention BOS rescale (c1) on prompts their entropy detector flags",
                  default_params={"c1": C1, "threshold": 0.0, "detect": True, "detect_layers": None,
                                  "mask_padding": True})
