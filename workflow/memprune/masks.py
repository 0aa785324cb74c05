"""Mask computation for one subset: read activations and weights, apply `scores`, write bit-packed zarr.

Store layout (zarr v3, one store per subset): for every layer L (execution order, attribute `layers`)
  L            (step, L.out, L.in_packed) uint8   per-timestep masks M_t (eq. 6)
  L.union      (L.out, L.in_packed) uint8         their union over the first tau steps (eq. 7)
bit-packed along the input axis with numpy.packbits (big bit order); unpack with
`np.unpackbits(a, axis=-1, count=in_features[L])`, or `memprune.masks.unpack`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .prompts import InputError

log = logging.getLogger(__name__)


def load_unet(model: str | Path):
    """Only the UNet of a diffusers pipeline (masks need the FFN weights, not the whole pipeline)."""
    from diffusers import UNet2DConditionModel

    try:
        return UNet2DConditionModel.from_pretrained(str(model), subfolder="unet", use_safetensors=True)
    except OSError as e:
        raise InputError(f"cannot load the UNet of {str(model)!r}: {e}") from None


def branch_sums(ds, layer: str, variant: str) -> np.ndarray:
    """(prompt, step, branch, feature) -> (step, feature) summed over prompts: the cond branch (paper's
    equations), or both branches pooled (the reference code)."""
    arr = ds[layer]
    arr = arr.sel(branch="cond") if variant == "paper" else arr.sum("branch")
    return arr.sum("prompt").values.astype(np.float64)


def unpack(packed: np.ndarray, in_features: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=in_features).astype(bool)


def compute_subset_masks(model, activations, null, sparsity: float, tau: int, variant: str, out) -> None:
    import torch
    import xarray as xr

    from .models import ffn_weights, weights_hash
    from .overlap import density
    from .scores import memorized_masks_packed, union_over_timesteps_packed
    from .store import open_zarr, write_zarr

    act = open_zarr(activations, load=False)
    nul = open_zarr(null, load=False)
    weights = ffn_weights(load_unet(model))
    layers = list(act.attrs["layers"])
    if list(weights) != layers:
        raise InputError(
            f"{activations}: its layers {layers[:2]}... do not match the model's FFN layers {list(weights)[:2]}...: "
            "activations were captured from a different model"
        )
    if act.sizes["step"] != nul.sizes["step"] or not np.allclose(act["t"].values, nul["t"].values):
        raise InputError(f"{activations} and {null}: different denoising timesteps")
    if tau > act.sizes["step"]:
        raise InputError(f"config key masks.tau = {tau} exceeds the {act.sizes['step']} denoising steps")
    n_prompts = act.sizes["prompt"]
    data_vars, in_features = {}, {}
    # One thread: the per-step ops are small, and OpenMP threads on a loaded machine made them ~20x slower
    # (measured); parallelism comes from Snakemake running subsets as separate jobs.
    torch.set_num_threads(1)
    for layer in layers:
        w = weights[layer]
        mem = branch_sums(act, layer, variant)
        nul_sum = branch_sums(nul, layer, variant)
        for what, arr, path in (("activations", mem, activations), ("null activations", nul_sum, null)):
            if not np.isfinite(arr).all():
                raise InputError(f"{path}: NaN or inf in {what} of layer {layer}")
        if mem.shape[1] != w.shape[1]:
            raise InputError(f"{activations}: layer {layer} has {mem.shape[1]} features, the model's weight {w.shape[1]}")
        masks = memorized_masks_packed(w, torch.from_numpy(mem).float(), torch.from_numpy(nul_sum).float(),
                                       n_prompts, sparsity)
        union = union_over_timesteps_packed(masks, tau)
        dims = (f"{layer}.out", f"{layer}.in_packed")
        data_vars[layer] = (("step", *dims), masks)
        data_vars[f"{layer}.union"] = (dims, union)
        in_features[layer] = int(w.shape[1])
        per_step = density(masks, w.numel())
        log.info("%s: density per step %.4f..%.4f, union %.4f", layer, per_step.min(), per_step.max(),
                 float(density(union, w.numel())))
    ds = xr.Dataset(
        data_vars,
        coords={"step": act["step"].values, "t": ("step", act["t"].values)},
        attrs={
            "layers": layers, "in_features": [in_features[layer] for layer in layers],
            "sparsity": sparsity, "tau": tau, "variant": variant, "n_prompts": n_prompts,
            "prompts": [str(p) for p in act["prompt"].values], "model": str(model),
            "base_weights_sha256": weights_hash(weights),
            "packing": "numpy.packbits along the last axis; np.unpackbits(a, axis=-1, count=in_features)",
        },
    )
    write_zarr(ds, out)


def read_masks(path) -> tuple[list[str], dict[str, int], dict[str, np.ndarray], dict[str, np.ndarray], object]:
    """(layers, in_features, per-step packed masks, packed unions, dataset) of one subset's mask store."""
    from .store import open_zarr

    ds = open_zarr(path)
    layers = list(ds.attrs["layers"])
    in_features = dict(zip(layers, (int(x) for x in ds.attrs["in_features"])))
    per_step = {layer: ds[layer].values for layer in layers}
    union = {layer: ds[f"{layer}.union"].values for layer in layers}
    return layers, in_features, per_step, union, ds
