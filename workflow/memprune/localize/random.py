"""Control: random masks with the same number of entries per (layer, row) as another method's (`like`), per
timestep and for the union apart (a union of random per-step masks would not keep the union's counts), seeded."""

from __future__ import annotations

import numpy as np

from memprune.localize import Localizer, MaskSet


def random_rows_like(packed: np.ndarray, n_columns: int, rng: np.random.Generator) -> np.ndarray:
    """A packed mask (..., rows, ceil(n / 8)) with as many set bits per row as `packed`, columns uniformly at random:
    per row the c columns of smallest uniform keys (a partial sort: masks are ~1% dense), one leading index at a
    time so memory stays one (rows, n) block."""
    from memprune.localize.wanda_packed import unpack

    out = np.zeros_like(packed)
    flat_in, flat_out = packed.reshape(-1, *packed.shape[-2:]), out.reshape(-1, *packed.shape[-2:])
    for block, target in zip(flat_in, flat_out):
        counts = unpack(block, n_columns).sum(axis=-1)  # (rows,)
        c_max = int(counts.max(initial=0))
        if c_max == 0:
            continue
        keys = rng.random((len(counts), n_columns), dtype=np.float32)
        smallest = (np.argpartition(keys, c_max - 1, axis=-1)[:, :c_max] if c_max < n_columns
                    else np.argsort(keys, axis=-1))
        smallest = np.take_along_axis(smallest, np.argsort(np.take_along_axis(keys, smallest, -1), axis=-1), -1)
        mask = np.zeros((len(counts), n_columns), dtype=bool)
        rows, ranks = np.nonzero(np.arange(c_max)[None, :] < counts[:, None])
        mask[rows, smallest[rows, ranks]] = True
        target[...] = np.packbits(mask, axis=-1)
    return out


def locate(inputs, params):
    ref = inputs.reference
    per_step = None if ref.per_step is None else {
        l: random_rows_like(ref.per_step[l], ref.grid[l][1], inputs.rng) for l in ref.layers}
    union = {l: random_rows_like(ref.union[l], ref.grid[l][1], inputs.rng) for l in ref.layers}
    return MaskSet(layers=list(ref.layers), kinds=dict(ref.kinds), grid=dict(ref.grid), union=union, per_step=per_step,
                   steps=ref.steps, t=ref.t, attrs={})


LOCALIZER = Localizer(name="random", description="control: random masks with another localizer's counts per (layer, "
                                                "row, step), seeded",
                      locate=locate, defaults={"like": "wanda", "seed": 0},
                      param_docs={"like": "the localizer imitated (listed before this one)",
                                  "seed": "seeds the random masks, with the collection's name and the subset's index"},
                      reference=True)
