"""The localize stage's runner: a localizer on every subset of a collection, one mask store per subset
(`formats.masks`)."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np

from memprune.capture.gather import read_statistics
from memprune.errors import InputError

log = logging.getLogger(__name__)


def locate_collection(method: str, params: dict, model: str, collection: str, n_subsets: int, out: str | Path,
                      subsets_dir: str | None = None, null: str | None = None, reference_dir: str | None = None,
                      variant: str = "paper", neurons: str | None = None, subsets: dict | None = None,
                      layers: str | None = None) -> None:
    """Run `method` on every subset of `collection`; `<out>/<i>.zarr` per subset, written as one directory.
    The observed weights come from `layers` (`memprune layers`, written once per model) when given, else from
    the model's UNet."""
    import torch

    from memprune import localize
    from memprune.formats.edits import load_unet, unet_sha256
    from memprune.formats.layers import read_layers
    from memprune.formats.masks import read_mask_set, write_mask_set
    from memprune.analysis.overlap import density
    from memprune.formats.store import atomic_dir

    loc = localize.get(method)
    params = loc.params(params)
    if layers:
        weights, base_hash = read_layers(layers, loc.observes)
    else:
        unet = load_unet(model)
        base_hash = unet_sha256(unet)
        weights = {name: lin.weight.detach().float().cpu() for name, lin in loc.observes(unet)}
    layers = list(weights)
    null_ds, null_sums = read_statistics(null, layers, variant) if loc.statistics else (None, None)
    searched = None
    if loc.per_prompt:
        from memprune.localize.nemo_search import read_neurons

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
                                     subset_indices=None if subsets is None else list(subsets[str(i)]),
                                     rng=np.random.default_rng(
                [int(params.get("seed", 0)), zlib.crc32(collection.encode()), i]))
            attrs = {}
            if loc.statistics:
                path = Path(subsets_dir) / f"{i}.zarr"
                ds, inputs.memorized = read_statistics(path, layers, variant)
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
