"""Localizers: methods that say where memorization lives, as masks over named weights. One module per method,
each defining `LOCALIZER` (a `Localizer`); adding a method is one module here plus its config and schema entry.

A localizer declares what it needs, so the workflow captures each statistic once per distinct prompt and shares
it between every method that reads it:
  `observes`    the layers it masks and reads (a function unet -> [(module name, Linear)], execution order);
  `statistics`  the per-prompt statistics it reads from capture (e.g. "ffn_input_sumsq": per (layer, timestep)
                the sum over tokens of squared ff.net.2 inputs), () for none;
  `reference`   whether it imitates another method's masks (the random control);
  `per_prompt`  whether it reads a per-prompt search stored as data (NeMo: `memprune nemo` writes the neurons of
                every prompt of a collection; its masks are the subsets' unions).
`locate(inputs, params) -> MaskSet` is pure: tensors in (`Inputs`), masks out (`memprune.formats.masks.MaskSet`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from memprune.formats.masks import MaskSet
from memprune.models import ffn_layers
from memprune.errors import InputError
from memprune.registry import Registry


@dataclass
class Inputs:
    """What a localizer sees for one subset. `memorized[L]` / `null[L]`: float64 (step, feature) sums over the
    subset's prompts / over one null-prompt run of the statistic; `reference`: the imitated method's MaskSet."""

    weights: dict  # layer -> float32 torch weight (out, in)
    n_prompts: int = 0
    memorized: dict | None = None
    null: dict | None = None
    steps: np.ndarray | None = None
    t: np.ndarray | None = None
    reference: object | None = None
    rng: np.random.Generator | None = None
    model: str | None = None  # the model's directory or hub id (the oracle reads its ground truth there)
    neurons: object | None = None  # per-prompt search results of the collection (xarray Dataset; per_prompt methods)
    subset_indices: list | None = None  # the subset's prompts (lines of its prompt set; per_prompt methods)


@dataclass(frozen=True)
class Localizer:
    name: str
    description: str
    locate: Callable  # (Inputs, params: dict) -> MaskSet
    defaults: dict = field(default_factory=dict)  # parameters and their defaults (config overrides them)
    observes: Callable = ffn_layers
    statistics: tuple[str, ...] = ()
    reference: bool = False
    uses_timesteps: bool = True  # its masks have a per-timestep form (IOU over time)
    per_prompt: bool = False

    def params(self, given: dict) -> dict:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise InputError(f"localizer {self.name}: unknown parameter(s) {unknown}; known: {sorted(self.defaults)}")
        return {**self.defaults, **given}


_REGISTRY = Registry(__name__, "LOCALIZER", "localizer", Localizer)
register, get, names = _REGISTRY.register, _REGISTRY.get, _REGISTRY.names


def pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, dtype=bool), axis=-1)


def weight_mask_set(inputs: Inputs, union: dict, per_step: dict | None, attrs: dict) -> MaskSet:
    """A MaskSet of kind-"weight" masks over `inputs.weights`' layers, with the inputs' timesteps if per_step."""
    layers = list(inputs.weights)
    return MaskSet(layers=layers, kinds={l: "weight" for l in layers},
                   grid={l: tuple(inputs.weights[l].shape) for l in layers}, union=union, per_step=per_step,
                   steps=inputs.steps if per_step is not None else None, t=inputs.t if per_step is not None else None,
                   attrs=attrs)
