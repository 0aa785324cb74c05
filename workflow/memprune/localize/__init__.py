"""Localizers: methods that say where memorization lives, as masks over named weights. One module per method,
each defining `LOCALIZER` (a `Localizer`); adding a method is one module here (docs/methods.md, "Adding a
localizer"): the registry finds it, and the config check takes its parameters from it.

A localizer declares what it needs, so the workflow captures each statistic once per distinct prompt and shares
it between every method that reads it:
  `observes`    the layers it masks and reads (a function unet -> [(module name, Linear)], execution order);
  `statistics`  the per-prompt statistics it reads from capture (`STATISTICS`: "ffn_input_sumsq" is per
                (layer, timestep) the sum over tokens of squared ff.net.2 inputs), () for none;
  `reference`   whether it imitates another method's masks (the random control);
  `per_prompt`  whether it reads a per-prompt search stored as data (NeMo: `memprune nemo` writes the neurons of
                every prompt of a collection; its masks are the subsets' unions).
Its parameters are declared once, in the module: `defaults` (name -> default) and `param_docs` (name -> a one-line
description, or a JSON-schema mapping with a `description` and constraints such as `minimum`); the config schema's
entry for it is made from these (`memprune.plan.localizer_schema`), the type from the default's.
`locate(inputs, params) -> MaskSet` is pure: tensors in (`Inputs`), masks out (`memprune.formats.masks.MaskSet`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
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


STATISTICS = ("ffn_input_sumsq",)  # what capture records (memprune.capture.hooks), per distinct prompt


@dataclass(frozen=True)
class Localizer:
    name: str
    description: str  # one line: what it does (the config schema's description of its entry)
    locate: Callable  # (Inputs, params: dict) -> MaskSet
    defaults: dict = field(default_factory=dict)  # parameters and their defaults (config overrides them)
    param_docs: dict = field(default_factory=dict)  # parameter -> description, or {"description": ..., constraints}
    observes: Callable = ffn_layers
    statistics: tuple[str, ...] = ()
    reference: bool = False
    uses_timesteps: bool = True  # its masks have a per-timestep form (IOU over time)
    per_prompt: bool = False

    def __post_init__(self):
        """A module's mistakes stop the config check naming the module, before any job runs."""
        where = f"localizer {self.name!r} ({self.source})"
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(self.name)):
            raise InputError(f"{where}: a name is letters, digits and _ (it is a config key and a path part)")
        undocumented = [k for k in self.defaults if not _doc_text(self.param_docs.get(k))]
        stray = sorted(set(self.param_docs) - set(self.defaults))
        if undocumented or stray:
            raise InputError(f"{where}: every parameter has a default in defaults= and a one-line description in "
                             f"param_docs=; without a description: {undocumented}, without a default: {stray}")
        unknown = sorted(set(self.statistics) - set(STATISTICS))
        if unknown:
            raise InputError(f"{where}: unknown statistics {unknown}; capture records {list(STATISTICS)}")

    @property
    def source(self) -> str:
        """The file of the module that defines `locate` (relative to the checkout when inside it)."""
        path = Path(getattr(sys.modules.get(getattr(self.locate, "__module__", None)), "__file__", None) or "?")
        checkout = Path(__file__).resolve().parents[3]
        try:
            return path.resolve().relative_to(checkout).as_posix()
        except ValueError:
            return str(path)

    def params(self, given: dict) -> dict:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise InputError(f"localizer {self.name}: unknown parameter(s) {unknown}; known: {sorted(self.defaults)} "
                             f"(its defaults= in {self.source})")
        return {**self.defaults, **given}


def _doc_text(doc) -> str:
    text = doc.get("description") if isinstance(doc, dict) else doc
    return text.strip() if isinstance(text, str) else ""


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
