"""The registry of model variants that evaluation and attacks compare.

A variant is one module of this package defining `VARIANT` (a `Variant`): how to load the model (the base, or the
base with an edit checkpoint from `memprune.formats.edits`) and how to generate with it (plainly, or with an
inference-time mitigation hooked into sampling), with its label and colour for tables and figures. Adding a
variant is one module here plus its config entry; `register` adds one from outside the package (tests, plug-ins).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from memprune.errors import InputError
from memprune.registry import Registry


def _load_base(model, checkpoint, device, dtype, scheduler):
    from memprune.models import load_pipeline

    if checkpoint:
        raise InputError(f"this variant runs the unedited model; got a checkpoint {checkpoint}")
    return load_pipeline(model, device, dtype, scheduler)


def _load_edited(model, checkpoint, device, dtype, scheduler):
    from memprune.formats.edits import load_edited_pipeline

    if not checkpoint:
        raise InputError("this variant needs an edit checkpoint (--checkpoint DIR)")
    return load_edited_pipeline(checkpoint, base=model, device=device, dtype=dtype, scheduler=scheduler)


def _generate_plain(pipe, prompts, seeds, cfg, params, progress=False):
    from memprune.sampling import generate

    return generate(pipe, prompts, seeds, cfg, progress=progress), {}


def _generate_embeds_plain(pipe, embeds, seeds, cfg, params, progress=False):
    from memprune.sampling import generate

    return generate(pipe, [""] * len(seeds), seeds, cfg, progress=progress, prompt_embeds=embeds), {}


@dataclass(frozen=True)
class Variant:
    """`load(model, checkpoint, device, dtype, scheduler) -> pipeline`;
    `generate(pipe, prompts, seeds, cfg, params, progress) -> (images (N, H, W, 3) uint8, info dict)`, where
    info holds per-image arrays (N,) or scalars the variant wants recorded (e.g. Wen's iterations);
    `generate_embeds(pipe, embeds (N, L, D), seeds, cfg, params, progress)`: the same from given text embeddings
    (the recovery attack's), with the variant's inference-time mitigation, if any, applied on top of them."""

    name: str
    label: str
    colour: str
    needs_checkpoint: bool = False
    trained: bool = False  # its checkpoint comes from the plan's training rule (adversarial), not a localizer's masks
    attacked_as: str | None = None  # an inference-time mitigation: the variant whose UNet an attacker optimises against
    load: Callable = _load_base
    generate: Callable = _generate_plain
    generate_embeds: Callable = _generate_embeds_plain
    description: str = ""
    default_params: dict = field(default_factory=dict)


_REGISTRY = Registry(__name__, "VARIANT", "model variant", Variant)
register, get, names = _REGISTRY.register, _REGISTRY.get, _REGISTRY.names
