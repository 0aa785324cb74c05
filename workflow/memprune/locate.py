"""The localize stage: gather each subset's statistics from the capture chunks, run a localizer on every subset
of a collection, write one mask store per subset (`memprune.masks`); and prune, i.e. turn a mask store into an
edit checkpoint (`memprune.edits`)."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np

from .prompts import InputError

log = logging.getLogger(__name__)

# The statistic "ffn_input_sumsq" under each capture variant: which CFG branch is stored (`activations`).
STORED_BRANCH = {"paper": "cond", "reference": "pooled"}


def gather_collection(chunks: list[str], prompts_file: str, subsets: dict[str, list[int]], out: str | Path) -> None:
    """One store per subset (`<out>/<i>.zarr`, indexed by (layer, step, prompt)) gathered from the chunk stores."""
    import xarray as xr

    from .prompts import read_prompts
    from .store import atomic_dir, open_zarr, write_zarr

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


def _read_statistics(path, layers, variant):
    from .store import open_zarr

    ds = open_zarr(path, load=False)
    if list(ds.attrs["layers"]) != layers:
        raise InputError(f"{path}: its layers {list(ds.attrs['layers'])[:2]}... are not the model's "
                         f"{layers[:2]}...: activations were captured from a different model")
    return ds, {layer: statistic_sums(ds, layer, variant, path) for layer in layers}


def locate_collection(method: str, params: dict, model: str, collection: str, n_subsets: int, out: str | Path,
                      subsets_dir: str | None = None, null: str | None = None, reference_dir: str | None = None,
                      variant: str = "paper", neurons: str | None = None, subsets: dict | None = None) -> None:
    """Run `method` on every subset of `collection`; `<out>/<i>.zarr` per subset, written as one directory."""
    import torch

    from . import localize
    from .edits import load_unet, unet_sha256
    from .masks import read_mask_set, write_mask_set
    from .overlap import density
    from .store import atomic_dir

    loc = localize.get(method)
    params = loc.params(params)
    unet = load_unet(model)
    base_hash = unet_sha256(unet)
    weights = {name: lin.weight.detach().float().cpu() for name, lin in loc.observes(unet)}
    layers = list(weights)
    null_ds, null_sums = _read_statistics(null, layers, variant) if loc.statistics else (None, None)
    searched = None
    if loc.per_prompt:
        from .neurons import read_neurons

        if not neurons:
            raise InputError(f"localizer {method}: needs --neurons (its per-prompt search, `memprune nemo`)")
        searched = read_neurons(neurons, base_hash)
        if subsets is None or len(subsets) != n_subsets:
            raise InputError(f"localizer {method}: needs the {n_subsets} subsets' prompt indices (--subsets-json)")
    # One thread: the per-step ops are small, and OpenMP threads on a loaded machine made them ~20x slower
    # (measured); parallelism comes from Snakemake running collections and methods as separate jobs.
    torch.set_num_threads(1)
    with atomic_dir(Path(out)) as tmp:
        for i in range(n_subsets):
            inputs = localize.Inputs(weights=weights, model=str(model), neurons=searched,
                                     subset_indices=None if subsets is None else list(subsets[str(i)]), rng=np.random.default_rng(
                [int(params.get("seed", 0)), zlib.crc32(collection.encode()), i]))
            attrs = {}
            if loc.statistics:
                path = Path(subsets_dir) / f"{i}.zarr"
                ds, inputs.memorized = _read_statistics(path, layers, variant)
                if ds.sizes["step"] != null_ds.sizes["step"] or not np.allclose(ds["t"].values, null_ds["t"].values):
                    raise InputError(f"{path} and {null}: different denoising timesteps")
                if params.get("tau", 0) > ds.sizes["step"]:
                    raise InputError(f"config key localizers.{method}.tau = {params['tau']} exceeds the "
                                     f"{ds.sizes['step']} denoising steps")
                inputs.null, inputs.n_prompts = null_sums, ds.sizes["prompt"]
                inputs.steps, inputs.t = ds["step"].values, ds["t"].values
                attrs = {"prompts": [str(p) for p in ds["prompt"].values], "n_prompts": ds.sizes["prompt"],
                         "activations": str(path), "variant": variant}
            if loc.reference:
                inputs.reference = read_mask_set(Path(reference_dir) / f"{i}.zarr")
                if inputs.reference.attrs.get("base_unet_sha256") != base_hash:
                    raise InputError(f"{reference_dir}/{i}.zarr: masks of another model than {model}")
                attrs = {k: inputs.reference.attrs[k] for k in ("prompts", "n_prompts") if k in inputs.reference.attrs}
            if loc.per_prompt:
                attrs = {"neurons": str(neurons)}
            ms = loc.locate(inputs, params)
            ms.attrs = {**attrs, **ms.attrs, "method": method, "params": params, "collection": collection,
                        "subset": i, "model": str(model), "base_unet_sha256": base_hash}
            for layer in ms.layers:
                log.info("%s %s/%d %s: density %.4f", method, collection, i, layer,
                         float(density(ms.union[layer], int(np.prod(ms.grid[layer])))))
            write_mask_set(ms, tmp / f"{i}.zarr")


def prune(model: str, mask_store: str | Path, out: str | Path) -> dict:
    """An edit checkpoint of `model` with a mask store's unions zeroed (the paper's eq. 7 for Wanda masks)."""
    from .edits import write_masked_edit
    from .masks import read_mask_set

    ms = read_mask_set(mask_store)
    return write_masked_edit(model, ms.layer_masks(), out, ms.attrs["method"], ms.attrs["params"],
                             expected_base=ms.attrs.get("base_unet_sha256"),
                             extra={"masks": str(mask_store), "collection": ms.attrs.get("collection"),
                                    "subset": ms.attrs.get("subset"), "n_prompts": ms.attrs.get("n_prompts")})
