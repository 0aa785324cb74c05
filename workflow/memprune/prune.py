"""Pruned checkpoints (the paper's section 4.1, equation 7 applied; section 5.2): zero the union mask's entries
of every FFN second linear (`ff.net.2`) and keep the rest of the base model unchanged.

A checkpoint directory holds only what was edited, so it is small and refers to its base by content hash:
  weights.safetensors   {<layer>.weight: float32 (out, in)} the edited ff.net.2 weights, one per masked layer
  manifest.json         base model (as given) and its ff.net.2 weights' sha256, the mask store and its
                        parameters, zeroed weights per layer and in total, the weights file's sha256,
                        memprune's version
Loading (`load_pruned_pipeline`) refuses a checkpoint whose base, layers, shapes, file hash or zero counts do
not match, so a pruned model is never silently built from the wrong base or from a corrupted file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from .prompts import InputError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
EXPORTED_MANIFEST_FILE = "memprune_manifest.json"  # the manifest's copy inside an exported pipeline
FORMAT = "memprune-pruned-ffn/1"


def prune_weights(weights: dict, masks: dict) -> tuple[dict, dict[str, int]]:
    """Zero the masked entries (equation 7: W[i, j] = 0 where the union mask M[i, j] is set).

    weights: {layer: float tensor (out, in)}; masks: {layer: bool array/tensor (out, in)}, a subset of the
    layers. Returns ({layer: pruned copy (out, in)} for the masked layers, {layer: number of mask entries}).
    """
    import torch

    pruned, zeroed = {}, {}
    for layer, mask in masks.items():
        w = weights[layer]
        mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        if tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"layer {layer}: mask shape {tuple(mask.shape)} != weight shape {tuple(w.shape)}")
        pruned[layer] = w.masked_fill(mask, 0.0)
        zeroed[layer] = int(mask.sum())
    return pruned, zeroed


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _union_masks(mask_store: Path, layers: list[str], shapes: dict[str, tuple[int, int]]) -> tuple[dict, object]:
    """{layer: bool (out, in)} union masks of a mask store, checked against the model's layers and shapes."""
    from .masks import read_masks, unpack

    try:
        mask_layers, in_features, _, unions, ds = read_masks(mask_store)
    except (FileNotFoundError, KeyError) as e:
        raise InputError(f"{mask_store}: not a memprune mask store ({e})") from None
    if mask_layers != layers:
        raise InputError(f"{mask_store}: its layers {mask_layers[:2]}... are not the model's FFN layers {layers[:2]}...")
    masks = {}
    for layer in layers:
        mask = unpack(unions[layer], in_features[layer])
        if mask.shape != shapes[layer]:
            raise InputError(f"{mask_store}: layer {layer} mask shape {mask.shape} != the model's weight {shapes[layer]}")
        masks[layer] = mask
    return masks, ds


def prune_checkpoint(model: str | Path, mask_store: str | Path, out: str | Path) -> dict:
    """Write a pruned checkpoint of `model` (diffusers directory or hub id) with the union masks of `mask_store`
    (a subset's `.zarr` from `memprune masks`) to the directory `out`, atomically. Returns the manifest."""
    from safetensors.torch import save_file

    from . import __version__
    from .masks import load_unet
    from .models import ffn_weights, weights_hash
    from .store import atomic_dir

    mask_store, out = Path(mask_store), Path(out)
    weights = ffn_weights(load_unet(model))
    base_hash = weights_hash(weights)
    masks, ds = _union_masks(mask_store, list(weights), {k: tuple(w.shape) for k, w in weights.items()})
    mask_base = ds.attrs.get("base_weights_sha256")
    if mask_base is not None and mask_base != base_hash:
        raise InputError(
            f"{mask_store}: masks were computed on FFN weights with sha256 {mask_base}, but {model} has {base_hash}: "
            "prune with the model the masks were computed from"
        )
    pruned, zeroed = prune_weights(weights, masks)
    with atomic_dir(out) as tmp:
        tensors = {f"{layer}.weight": w.contiguous() for layer, w in pruned.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "base_ffn_sha256": base_hash})
        local = Path(str(model))
        manifest = {
            "format": FORMAT,
            "base_model": str(model),
            # A path given relative to the workflow's directory: recorded absolute too, so loading works elsewhere.
            "base_model_path": str(local.resolve()) if local.exists() else None,
            "base_ffn_sha256": base_hash,
            "hash_of": "memprune.models.weights_hash(ffn_weights(unet)): float32 CPU ff.net.2 weights",
            "masks": {
                "path": str(mask_store), "sparsity": ds.attrs.get("sparsity"), "tau": ds.attrs.get("tau"),
                "variant": ds.attrs.get("variant"), "n_prompts": ds.attrs.get("n_prompts"),
            },
            "layers": list(pruned),
            "shapes": {layer: list(w.shape) for layer, w in pruned.items()},
            "zeroed": zeroed,
            "zeroed_total": int(sum(zeroed.values())),
            "ffn_weights_total": int(sum(w.numel() for w in weights.values())),
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
            "memprune_version": __version__,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("pruned %d of %d ff.net.2 weights (%.4f%%) into %s", manifest["zeroed_total"],
             manifest["ffn_weights_total"], 100 * manifest["zeroed_total"] / manifest["ffn_weights_total"], out)
    return manifest


def read_manifest(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{checkpoint_dir}: not a pruned checkpoint (no {MANIFEST_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable manifest ({e})") from None
    missing = [k for k in ("format", "base_model", "base_ffn_sha256", "zeroed", "weights_sha256") if k not in manifest]
    if missing or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} manifest (missing {missing or 'the right format'})")
    return manifest


def _default_base(manifest: dict) -> str:
    given = manifest["base_model"]
    if Path(given).exists():
        return given
    resolved = manifest.get("base_model_path")
    return resolved if resolved and Path(resolved).exists() else given  # else: a hub id


def read_pruned_weights(checkpoint_dir: str | Path, manifest: dict) -> dict:
    """{layer: float32 (out, in)} of a checkpoint, after checking the file hash and the zero counts."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / WEIGHTS_FILE
    if not path.exists():
        raise InputError(f"{checkpoint_dir}: no {WEIGHTS_FILE}")
    digest = file_sha256(path)
    if digest != manifest["weights_sha256"]:
        raise InputError(f"{path}: sha256 {digest} differs from the manifest's {manifest['weights_sha256']}: "
                         "the checkpoint is corrupted or was edited")
    try:
        tensors = load_file(str(path))  # safetensors: no unpickling
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable safetensors file ({e})") from None
    weights = {}
    for layer, count in manifest["zeroed"].items():
        key = f"{layer}.weight"
        if key not in tensors:
            raise InputError(f"{path}: no tensor {key!r} for a layer the manifest lists")
        w = tensors[key]
        zeros = int((w == 0).sum())
        # >=: an entry of the base may already be zero; fewer zeros than pruned means corruption.
        if zeros < int(count):
            raise InputError(f"{path}: {key} has {zeros} zero entries, fewer than the {count} the manifest says were "
                             "pruned: the checkpoint is corrupted")
        if not bool(w.isfinite().all()):
            raise InputError(f"{path}: {key} holds NaN or inf")
        weights[layer] = w
    extra = sorted(set(k.removesuffix(".weight") for k in tensors) - set(weights))
    if extra:
        raise InputError(f"{path}: tensors {extra[:3]} are not listed in the manifest")
    return weights


def load_pruned_pipeline(checkpoint_dir: str | Path, base: str | Path | None = None, device: str = "auto",
                         dtype: str = "auto", scheduler: str | None = None):
    """A ready `StableDiffusionPipeline`: the base model with the checkpoint's edited ff.net.2 weights.

    `base` defaults to the manifest's base model. Refuses (InputError naming the checkpoint) a base whose
    ff.net.2 weights hash differs from the manifest's, unknown layers, shape mismatches, and weights with
    fewer zeros than were pruned. The base is loaded in float32 on the CPU (the hash is defined there), edited,
    then moved to `device` / `dtype`.
    """
    import torch

    from .models import ffn_layers, ffn_weights, load_pipeline, resolve_device, resolve_dtype, weights_hash

    checkpoint_dir = Path(checkpoint_dir)
    manifest = read_manifest(checkpoint_dir)
    base = str(base) if base is not None else _default_base(manifest)
    edited = read_pruned_weights(checkpoint_dir, manifest)
    pipe = load_pipeline(base, "cpu", "float32", scheduler)
    base_hash = weights_hash(ffn_weights(pipe.unet))
    if base_hash != manifest["base_ffn_sha256"]:
        raise InputError(
            f"{checkpoint_dir}: pruned from a base whose ff.net.2 weights have sha256 {manifest['base_ffn_sha256']}, "
            f"but {base} has {base_hash}: load it with the model it was pruned from"
        )
    layers = dict(ffn_layers(pipe.unet))
    for layer, w in edited.items():
        if layer not in layers:
            raise InputError(f"{checkpoint_dir}: layer {layer!r} is not an ff.net.2 layer of {base}")
        if tuple(w.shape) != tuple(layers[layer].weight.shape):
            raise InputError(f"{checkpoint_dir}: layer {layer} weight shape {tuple(w.shape)} != "
                             f"{tuple(layers[layer].weight.shape)} in {base}")
    with torch.no_grad():
        for layer, w in edited.items():
            layers[layer].weight.copy_(w)
    device = resolve_device(device)
    pipe = pipe.to(device=device, dtype=resolve_dtype(dtype, device))
    log.info("loaded %s on %s: %d ff.net.2 weights zeroed", checkpoint_dir, base, manifest.get("zeroed_total", 0))
    return pipe


def export_pipeline(checkpoint_dir: str | Path, out: str | Path, base: str | Path | None = None,
                    dtype: str = "float32") -> Path:
    """Write the pruned model as a full diffusers pipeline directory (safetensors) loadable with
    `StableDiffusionPipeline.from_pretrained(out)`, with a copy of the manifest; atomically."""
    from .store import atomic_dir

    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    pipe = load_pruned_pipeline(checkpoint_dir, base=base, device="cpu", dtype=dtype)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        shutil.copyfile(checkpoint_dir / MANIFEST_FILE, tmp / EXPORTED_MANIFEST_FILE)
    return out
