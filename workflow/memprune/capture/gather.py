"""Gather: one store per subset, indexed by (layer, step, prompt), from the capture chunks; and the summed
statistics a localizer reads from such a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memprune.errors import InputError

# The statistic "ffn_input_sumsq" under each capture variant: which CFG branch is stored (`capture.hooks`).
STORED_BRANCH = {"paper": "cond", "reference": "pooled"}


def gather_collection(chunks: list[str], prompts_file: str, subsets: dict[str, list[int]], out: str | Path) -> None:
    """One store per subset (`<out>/<i>.zarr`, indexed by (layer, step, prompt)) gathered from the chunk stores."""
    import xarray as xr

    from memprune.formats.prompts import read_prompts
    from memprune.formats.store import atomic_dir, open_zarr, write_zarr

    pool = read_prompts(Path(prompts_file))
    stores = [open_zarr(c) for c in chunks]
    merged = xr.concat(stores, dim="prompt") if len(stores) > 1 else stores[0]
    have = set(merged.prompt.values.tolist())
    with atomic_dir(Path(out)) as tmp:
        for i, indices in subsets.items():
            prompts = [pool[k] for k in indices]
            missing = [p for p in prompts if p not in have]
            if missing:
                raise InputError(f"activation chunks {chunks} lack {len(missing)} prompt(s), e.g. {missing[0][:60]!r}")
            subset = merged.sel(prompt=prompts).assign_coords(prompt=np.array(prompts, dtype=object))
            subset.attrs = {**stores[0].attrs, "subset_prompts": len(prompts)}
            write_zarr(subset, tmp / f"{i}.zarr")


def statistic_sums(ds, layer: str, variant: str, path) -> np.ndarray:
    """(prompt, step, branch, feature) -> float64 (step, feature), summed over prompts, of the stored branch."""
    branch = STORED_BRANCH[variant]
    if branch not in ds["branch"].values:
        raise InputError(f"{path}: holds branches {list(ds['branch'].values)}, not {branch!r} that the "
                         f"activations variant {variant!r} needs: capture again")
    arr = ds[layer].sel(branch=branch).sum("prompt", skipna=False).values.astype(np.float64)  # NaN must stop it
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: NaN or inf in the activations of layer {layer}")
    return arr


def read_statistics(path, layers, variant):
    from memprune.formats.store import open_zarr

    ds = open_zarr(path, load=False)
    if list(ds.attrs["layers"]) != layers:
        raise InputError(f"{path}: its layers {list(ds.attrs['layers'])[:2]}... are not the model's "
                         f"{layers[:2]}...: activations were captured from a different model")
    return ds, {layer: statistic_sums(ds, layer, variant, path) for layer in layers}
