"""Prompt sets, subsets and collections: which prompts each subset holds, and which activation chunks
(fixed slices of a prompt set) hold them. Pure Python, no Snakemake import: `rules/common.smk` calls it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from memprune.errors import InputError
from memprune.plan.inputs import read_prompt_file


def draw_subsets(n_prompts: int, n_subsets: int, size: int, seed: int, where: str = "collection") -> list[list[int]]:
    """`n_subsets` lists of `size` distinct prompt indices (without replacement inside a subset), seeded."""
    if size > n_prompts:
        raise InputError(f"{where}: subset size {size} is larger than its prompt set ({n_prompts} prompts)")
    if size < 1 or n_subsets < 1:
        raise InputError(f"{where}: size and n_subsets must be >= 1")
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(n_prompts, size=size, replace=False).tolist()) for _ in range(n_subsets)]


def subsets_from_files(set_prompts: list[str], files: list[str | Path], where: str = "collection") -> list[list[int]]:
    """Indices into the set of the prompts listed in each subset file (one prompt a line)."""
    index = {p: i for i, p in enumerate(set_prompts)}
    out = []
    for f in files:
        prompts = read_prompt_file(f, allow_duplicates=False)
        missing = [p for p in prompts if p not in index]
        if missing:
            raise InputError(f"{f}: {len(missing)} prompt(s) not in the prompt set of {where}, e.g. "
                             f"{missing[0][:60]!r}")
        out.append(sorted(index[p] for p in prompts))
    return out


def chunks_of(indices, chunk_size: int) -> list[int]:
    return sorted({i // chunk_size for i in indices})


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
