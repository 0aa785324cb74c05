"""Control: random masks with the same number of entries per (layer, row) as another method's (`like`), per
timestep and for the union apart (a union of random per-step masks would not keep the union's counts), seeded."""

from __future__ import annotations

import numpy as np

from . import Localizer, MaskSet


def random_rows_like(packed: np.ndarray, n_columns: int, rng: np.random.Generator) -> np.ndarray:
    """A packed mask (..., rows, ceil(n / 8)) with as many set bits per row as `packed`, columns uniformly at random."""
    from ..scores_packed import unpack

    counts = unpack(packed, n_columns).sum(axis=-1)  # (..., rows)
    keys = rng.random((*counts.shape, n_columns))
    kth = np.take_along_axis(np.sort(keys, axis=-1), np.maximum(counts - 1, 0)[..., None], axis=-1)
    return np.packbits((keys <= kth) & (counts > 0)[..., None], axis=-1)


def locate(inputs, params):
    ref = inputs.reference
    per_step = None if ref.per_step is None else {
        l: random_rows_like(ref.per_step[l], ref.grid[l][1], inputs.rng) for l in ref.layers}
    union = {l: random_rows_like(ref.union[l], ref.grid[l][1], inputs.rng) for l in ref.layers}
    return MaskSet(layers=list(ref.layers), kinds=dict(ref.kinds), grid=dict(ref.grid), union=union, per_step=per_step,
                   steps=ref.steps, t=ref.t, attrs={})


LOCALIZER = Localizer(name="random", description="random masks with another method's counts per layer and row",
                      locate=locate, defaults={"like": "wanda", "seed": 0}, reference=True)
