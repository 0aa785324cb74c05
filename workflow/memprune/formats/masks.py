"""Mask stores: what a localizer found for one subset, as one zarr v3 store.

Every mask lives on a 2-D grid per layer: kind "weight" on the weight itself (out, in), kind "rows" (output
channels) on (1, out), kind "columns" (input features) on (1, in), so density and IOU are the same code for all.
Layout, for every layer L (execution order, attribute `layers`):
  L          (step, L.row, L.col_packed) uint8   per-timestep masks (e.g. the paper's M_t, eq. 6), if the method
                                                 has timesteps
  L.union    (L.row, L.col_packed) uint8         the mask applied by an edit (e.g. eq. 7's union)
bit-packed along the last axis with numpy.packbits; attributes `kinds`, `grid_rows`, `grid_cols`, `method`,
`params`, `base_unet_sha256`, `prompts`. `read_mask_set(path).layer_masks()` gives the masks an edit applies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memprune.errors import InputError


@dataclass
class MaskSet:
    """Masks of one subset: `union[L]` packed (rows, ceil(cols / 8)); `per_step[L]` packed (step, rows, ...) or
    None for a method without timesteps; `grid[L]` = (rows, cols); `kinds[L]` in memprune.formats.edits.KINDS."""

    layers: list[str]
    kinds: dict[str, str]
    grid: dict[str, tuple[int, int]]
    union: dict[str, np.ndarray]
    per_step: dict[str, np.ndarray] | None = None
    steps: np.ndarray | None = None
    t: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)

    def layer_masks(self) -> dict:
        """{layer: memprune.formats.edits.LayerMask} of the unions, unpacked."""
        from memprune.formats.edits import LayerMask
        from memprune.localize.wanda_packed import unpack

        out = {}
        for layer in self.layers:
            rows, cols = self.grid[layer]
            m = unpack(self.union[layer], cols)
            out[layer] = LayerMask(self.kinds[layer], m if self.kinds[layer] == "weight" else m[0])
        return out

    def n_set(self) -> dict[str, int]:
        return {layer: int(np.bitwise_count(self.union[layer]).sum()) for layer in self.layers}


def write_mask_set(ms: MaskSet, out: str | Path) -> None:
    import xarray as xr

    from memprune.formats.store import write_zarr

    data_vars = {}
    for layer in ms.layers:
        dims = (f"{layer}.row", f"{layer}.col_packed")
        if ms.per_step is not None:
            data_vars[layer] = (("step", *dims), ms.per_step[layer])
        data_vars[f"{layer}.union"] = (dims, ms.union[layer])
    coords = {} if ms.steps is None else {"step": ms.steps, "t": ("step", ms.t)}
    attrs = {**{k: v for k, v in ms.attrs.items() if k != "params"}, "params": json.dumps(ms.attrs.get("params", {})),
             "layers": list(ms.layers), "kinds": [ms.kinds[l] for l in ms.layers],
             "grid_rows": [int(ms.grid[l][0]) for l in ms.layers], "grid_cols": [int(ms.grid[l][1]) for l in ms.layers],
             "has_steps": int(ms.per_step is not None),
             "packing": "numpy.packbits along the last axis; np.unpackbits(a, axis=-1, count=grid_cols)"}
    write_zarr(xr.Dataset(data_vars, coords=coords, attrs=attrs), out)


def read_mask_set(path: str | Path) -> MaskSet:
    from memprune.formats.store import open_zarr

    try:
        ds = open_zarr(path)
        layers = list(ds.attrs["layers"])
        kinds = dict(zip(layers, ds.attrs["kinds"]))
        grid = {l: (int(r), int(c)) for l, r, c in zip(layers, ds.attrs["grid_rows"], ds.attrs["grid_cols"])}
        has_steps = bool(ds.attrs["has_steps"])
    except (FileNotFoundError, KeyError) as e:
        raise InputError(f"{path}: not a memprune mask store ({e})") from None
    attrs = dict(ds.attrs)
    attrs["params"] = json.loads(attrs.get("params", "{}"))
    return MaskSet(
        layers=layers, kinds=kinds, grid=grid, union={l: ds[f"{l}.union"].values for l in layers},
        per_step={l: ds[l].values for l in layers} if has_steps else None,
        steps=ds["step"].values if has_steps else None, t=ds["t"].values if has_steps else None, attrs=attrs)
