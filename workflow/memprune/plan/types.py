"""The plan's value types (prompt sets, collections, methods, compared models) and the small helpers every plan
module uses to write command arguments and errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from memprune.errors import InputError


@dataclass(frozen=True)
class PromptSet:
    name: str
    file: str  # the prompt file (for a detected set: the file the checkpoint writes)
    size: int
    detect_from: tuple[str, ...] = ()  # closed loop: the pool it is detected from

    @property
    def detected(self) -> bool:
        return bool(self.detect_from)


@dataclass(frozen=True)
class Collection:
    name: str
    set: str
    subsets: tuple[tuple[int, ...], ...]
    control: bool


@dataclass(frozen=True)
class Method:
    """A localizer with its parameters; `tag` names what its masks depend on (activation tag, parameters)."""

    name: str
    params: dict
    tag: str
    statistics: tuple[str, ...]
    reference: str | None  # the method whose masks it imitates (random)
    localizer: str = ""  # the implementation (localize/<localizer>.py); the entry's name unless it sets `localizer`
    per_prompt: bool = False  # reads a per-prompt search (NeMo's neurons) instead of activation captures


@dataclass(frozen=True)
class EvalModel:
    """One model compared by evaluation or the attack: `id` labels it in tables, `path` is its place under
    samples/, scores/ and the attack cache; pruned ones name their method, collection and subset."""

    id: str
    variant: str
    path: str
    method: str | None = None
    collection: str | None = None
    subset: int | None = None
    checkpoint: str | None = None  # a trained variant's (adversarial), written by its training rule

    @property
    def subset_label(self) -> str | None:
        return None if self.collection is None else f"{self.collection}/{self.subset}"


def prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def options(**values) -> str:
    """`--name value` for every option that is set (None is left out, never printed); underscores become dashes."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items() if v is not None)


def key_error(where: str, message: str) -> InputError:
    return InputError(f"config key {where}: {message}")
