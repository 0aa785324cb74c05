"""The evaluation's prompts (memorized, then non-memorized), the evaluated models (the models JSON) and the fair
split into per-subset test sets.

The models JSON is an ordered object, one entry per evaluated model: `{"none": {"variant": "none", "scores":
"none.nc"}, "pruned:wanda|mem_k10/0": {"variant": "pruned", "method": "wanda", "subset": "mem_k10/0", "scores":
"...nc", "prompts_file": "...txt", "indices": [3, 17, ...], "mask_costs": [["benchmark.tsv", share], ...]}, ...,
"wen": {"variant": "wen", "scores": "wen.nc"}}`. A model's variant id is its registry variant, with `:<method>`
for an edited one (`pruned:wanda`); a variant that needs a checkpoint has one model per subset (its `subset`,
and that subset's prompts as `prompts_file` + `indices`), every other variant one model, the baseline placed
on every subset's test set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from memprune.errors import InputError
from memprune.formats.prompts import read_prompts

GROUPS = ("memorized", "nonmemorized")


def eval_prompts(memorized: str | Path, max_memorized: int | None, nonmemorized: str | Path | None,
                 max_nonmemorized: int | None, read=read_prompts) -> tuple[list[str], list[str]]:
    """The first `max_memorized` memorized and `max_nonmemorized` non-memorized prompts; every file read whole
    (`read`: read_prompts, or the plan's once-per-file `plan.inputs.read_prompt_file`), none in both."""
    mem = read(Path(memorized))[:max_memorized]
    non = read(Path(nonmemorized))[:max_nonmemorized] if nonmemorized else []
    both = set(mem) & set(non)
    if both:
        raise InputError(f"prompt {sorted(both)[0]!r} is both in {memorized} (memorized) and {nonmemorized}")
    return mem, non


def fair_split(prompts: list[str], subset_prompts: dict[str, list[str]]) -> np.ndarray:
    """(subset, prompt) bool: prompt p is in subset s's test set, i.e. not one of the prompts whose
    activations gave s's mask (the paper: "we remove all the prompts in S_i from M to form the test sets")."""
    return np.array([[p not in set(sp) for p in prompts] for sp in subset_prompts.values()], dtype=bool).reshape(
        len(subset_prompts), len(prompts))


REFERENCE = "none"  # the unedited model: required, the reference of every ratio (and of the Frechet distance)


@dataclass(frozen=True)
class ModelEntry:
    """One entry of the models JSON (see the module docstring)."""

    key: str
    variant: str
    scores: str
    method: str | None = None
    subset: str | None = None
    prompts_file: str | None = None
    indices: tuple[int, ...] = ()
    mask_costs: tuple[tuple[str, float], ...] = ()

    @property
    def vid(self) -> str:
        """The variant id in eval.nc and the summary table: `none`, `pruned:wanda`, `wen`, ..."""
        return f"{self.variant}:{self.method}" if self.method else self.variant

    @property
    def per_subset(self) -> bool:
        return self.subset is not None


def one_per_subset(vid: str) -> bool:
    """Whether the variant of id `vid` (`pruned:wanda`) is one edited model per subset (registry entry): it
    needs a checkpoint made from a subset's masks; a trained one (adversarial) is one model, as the unedited."""
    from memprune import variants

    entry = variants.get(vid.partition(":")[0])
    return entry.needs_checkpoint and not entry.trained


def models_object(text: str | Path) -> tuple[dict, str]:
    """A models JSON argument (the text, or a file holding it) -> (the non-empty object, where it came from)."""
    text = str(text)
    source = "--models-json"
    if not text.lstrip().startswith("{"):
        source = text
        if not Path(text).is_file():
            raise InputError(f"models JSON: {text}: neither a JSON object nor a file")
        text = Path(text).read_text()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"models JSON ({source}): bad JSON ({e.msg})") from None
    if not isinstance(spec, dict) or not spec:
        raise InputError(f"models JSON ({source}): expected a non-empty JSON object")
    return spec, source


def read_models(text: str | Path) -> list[ModelEntry]:
    """The models JSON (the text, or a file holding it) -> its entries, in order; checked."""
    spec, source = models_object(text)
    models, seen = [], set()
    for key, e in spec.items():
        if not isinstance(e, dict) or "variant" not in e or "scores" not in e:
            raise InputError(f"models JSON ({source}): {key}: needs at least \"variant\" and \"scores\"")
        per_subset = one_per_subset(e["variant"])
        missing = [k for k in ("subset", "prompts_file", "indices") if per_subset and k not in e]
        if missing:
            raise InputError(f"models JSON ({source}): {key}: variant {e['variant']} is one model per subset: "
                             f"give {', '.join(missing)}")
        m = ModelEntry(key=str(key), variant=str(e["variant"]), scores=str(e["scores"]), method=e.get("method"),
                      subset=str(e["subset"]) if per_subset else None, prompts_file=e.get("prompts_file"),
                      indices=tuple(int(i) for i in e.get("indices", ())),
                      mask_costs=tuple((str(f), float(share)) for f, share in e.get("mask_costs", ())))
        if (m.vid, m.subset) in seen:
            raise InputError(f"models JSON ({source}): two models of {m.vid}"
                             + (f" for {m.subset}" if m.subset else ""))
        seen.add((m.vid, m.subset))
        models.append(m)
    if REFERENCE not in {m.vid for m in models}:
        raise InputError(f"models JSON ({source}): the unedited model (variant {REFERENCE!r}) is required")
    return models


def subset_prompts(models: Iterable[ModelEntry]) -> dict[str, list[str]]:
    """The prompts of each subset of the per-subset models: {label: prompts}, labels in first-seen order (the
    union over methods). Models of one subset (one per method) must name the same prompts."""
    cache: dict[str, list[str]] = {}
    out: dict[str, list[str]] = {}
    for m in models:
        if not m.per_subset:
            continue
        if m.prompts_file not in cache:
            cache[m.prompts_file] = read_prompts(Path(m.prompts_file))
        try:
            prompts = [cache[m.prompts_file][i] for i in m.indices]
        except IndexError:
            raise InputError(f"{m.key}: an index of {list(m.indices)} is beyond {m.prompts_file}'s "
                             f"{len(cache[m.prompts_file])} prompts") from None
        if out.setdefault(m.subset, prompts) != prompts:
            raise InputError(f"subset {m.subset}: {m.key} names other prompts than another model of it")
    return out
