"""Edits of a pipeline's UNet, and the one checkpoint format and loader for every edit.

A mask over a named layer (a `torch.nn.Linear` of the UNet, by module name) says what to zero:
  kind "weight"   bool (out, in)  entries of the weight (the paper's pruning: eq. 7 applied)
  kind "rows"     bool (out,)     output channels: rows of the weight and the matching bias entries (NeMo)
  kind "columns"  bool (in,)      input features: columns of the weight
`apply(unet, masks)` zeroes them in place. An edit that is not a mask (a fine-tuned UNet) is a set of replaced
tensors; both are written the same way:

  weights.safetensors   {<parameter name>: tensor} the edited parameters only, float32
  manifest.json         format, kind ("masked" | "weights"), the base model (by relative path or hub id, never
                        an absolute path: `base_model_fields`) and the sha256 of its whole UNet (`unet_sha256`),
                        method and parameters, per layer what was zeroed (masked edits), the weights file's
                        sha256, memprune's version

`load_edited_pipeline(dir)` refuses a checkpoint whose base hash, parameter names, shapes, file hash or zero
counts do not match, so an edited model is never silently built from the wrong base or a corrupted file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memprune.errors import InputError

log = logging.getLogger(__name__)

FORMAT = "memprune-edit/1"
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
EXPORTED_MANIFEST_FILE = "memprune_manifest.json"  # the manifest's copy inside an exported pipeline
KINDS = ("weight", "rows", "columns")
HASH_OF = "memprune.formats.edits.unet_sha256: every UNet parameter and buffer, float32 on the CPU, sorted by name"


@dataclass(frozen=True)
class LayerMask:
    """What to zero in one Linear layer: `mask` is bool (out, in), (out,) or (in,) for kind weight/rows/columns."""

    kind: str
    mask: np.ndarray

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"mask kind {self.kind!r}: expected one of {KINDS}")

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask as bool over the whole weight (out, in)."""
        m = np.asarray(self.mask, dtype=bool)
        expected = {"weight": shape, "rows": shape[:1], "columns": shape[1:]}[self.kind]
        if m.shape != tuple(expected):
            raise ValueError(f"{self.kind} mask of shape {m.shape} does not fit a weight of shape {tuple(shape)}")
        if self.kind == "rows":
            return np.broadcast_to(m[:, None], shape)
        if self.kind == "columns":
            return np.broadcast_to(m[None, :], shape)
        return m


def linear_layers(unet) -> dict:
    """{module name: module} of every torch.nn.Linear of the UNet."""
    import torch

    return {name: m for name, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}


def apply(unet, masks: dict[str, LayerMask]) -> dict[str, int]:
    """Zero the masked entries of the named layers in place; returns {layer: entries zeroed (mask size)}.

    `unet` may also be a pipeline (its `.unet` is edited). Rows also zero the bias entries of those channels."""
    import torch

    unet = getattr(unet, "unet", unet)
    layers = linear_layers(unet)
    zeroed = {}
    with torch.no_grad():
        for name, lm in masks.items():
            if name not in layers:
                raise InputError(f"edit: {name!r} is not a Linear layer of the UNet")
            layer = layers[name]
            full = torch.from_numpy(np.ascontiguousarray(lm.full(tuple(layer.weight.shape)))).to(layer.weight.device)
            layer.weight.masked_fill_(full, 0.0)
            if lm.kind == "rows" and layer.bias is not None:
                layer.bias.masked_fill_(torch.from_numpy(np.asarray(lm.mask, bool)).to(layer.bias.device), 0.0)
            zeroed[name] = int(full.sum())
    return zeroed


def unet_sha256(unet) -> str:
    """sha256 over every parameter and buffer of the UNet (float32, CPU, sorted by name): the base an edit refers to."""
    import torch

    h = hashlib.sha256()
    state = unet.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_unet(model: str | Path):
    """Only the UNet of a diffusers pipeline, float32 on the CPU."""
    from diffusers import UNet2DConditionModel

    try:
        return UNet2DConditionModel.from_pretrained(str(model), subfolder="unet", use_safetensors=True)
    except OSError as e:
        raise InputError(f"cannot load the UNet of {str(model)!r}: {e}") from None


def write_edit(out: str | Path, base_model: str | Path, base_hash: str, tensors: dict, kind: str, method: str,
               params: dict, zeroed: dict[str, int] | None = None, extra: dict | None = None) -> dict:
    """Write an edit checkpoint atomically: `tensors` {parameter name: edited tensor}. Returns the manifest."""
    from safetensors.torch import save_file

    from memprune import __version__
    from memprune.formats.store import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": FORMAT, "base_unet_sha256": base_hash})
        manifest = {
            "format": FORMAT, "kind": kind, "method": method, "params": params,
            **base_model_fields(base_model, out),
            "base_unet_sha256": base_hash, "hash_of": HASH_OF,
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "zeroed": zeroed or {}, "zeroed_total": int(sum((zeroed or {}).values())),
            "weights_file": WEIGHTS_FILE, "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
            "memprune_version": __version__, **(extra or {}),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def write_masked_edit(model: str | Path, masks: dict[str, LayerMask], out: str | Path, method: str, params: dict,
                      expected_base: str | None = None, extra: dict | None = None) -> dict:
    """Checkpoint of `model` with `masks` zeroed: only the edited weights (and biases of zeroed rows) are stored.
    `expected_base`: the UNet hash the masks were computed on; a different base is refused."""
    unet = load_unet(model)
    base_hash = unet_sha256(unet)
    if expected_base is not None and expected_base != base_hash:
        raise InputError(f"masks were computed on a UNet with sha256 {expected_base}, but {model} has {base_hash}: "
                         "edit the model the masks were computed from")
    zeroed = apply(unet, masks)
    layers = linear_layers(unet)
    tensors = {}
    for name, lm in masks.items():
        tensors[f"{name}.weight"] = layers[name].weight
        if lm.kind == "rows" and layers[name].bias is not None:
            tensors[f"{name}.bias"] = layers[name].bias
    total = sum(layers[n].weight.numel() for n in masks)
    manifest = write_edit(out, model, base_hash, tensors, "masked", method, params, zeroed,
                          {"weights_in_edited_layers": int(total), **(extra or {})})
    log.info("zeroed %d of %d weights of %d layers (%.4f%%) into %s", manifest["zeroed_total"], total, len(masks),
             100 * manifest["zeroed_total"] / max(total, 1), out)
    return manifest


def write_weights_edit(model: str | Path, unet, out: str | Path, method: str, params: dict,
                       extra: dict | None = None) -> dict:
    """Checkpoint of a UNet whose weights were changed (fine-tuned) from `model`'s: the tensors that differ."""
    base = load_unet(model)
    base_state, new_state = base.state_dict(), unet.state_dict()
    if set(base_state) != set(new_state):
        raise InputError(f"edit: the UNet's parameters differ in name from {model}'s")
    changed = {k: v for k, v in new_state.items() if not bool((v.float().cpu() == base_state[k].float()).all())}
    return write_edit(out, model, unet_sha256(base), changed, "weights", method, params, None, extra)


def read_manifest(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{checkpoint_dir}: not an edit checkpoint (no {MANIFEST_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable manifest ({e})") from None
    missing = [k for k in ("format", "kind", "base_model", "base_unet_sha256", "tensors", "weights_sha256")
               if k not in manifest]
    if missing or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} manifest (missing {missing or 'the right format'})")
    return manifest


def base_model_fields(base_model: str | Path, out: Path) -> dict:
    """How a manifest names its base model, with no absolute path (the base UNet's hash is what loading checks):
    `base_model` is a hub id or a relative path as given, an absolute path made relative to the working directory;
    a local base is also named relative to the checkpoint (`base_model_from_checkpoint`), so the checkpoint loads
    from any directory while the two keep their places (a results/ tree beside the models it was made from)."""
    local = Path(str(base_model))
    if not local.exists():
        return {"base_model": str(base_model)}  # a hub id
    given = os.path.relpath(local) if local.is_absolute() else str(base_model)
    return {"base_model": given, "base_model_from_checkpoint": os.path.relpath(local.resolve(), out.resolve())}


def _default_base(manifest: dict, checkpoint_dir: Path) -> str:
    """The base model a checkpoint names: from the working directory, else from the checkpoint, else (manifests
    written before the relative names) the absolute `base_model_path`, else the name as given (a hub id)."""
    given = manifest["base_model"]
    if Path(given).exists():
        return given
    from_checkpoint = manifest.get("base_model_from_checkpoint")
    if from_checkpoint and (checkpoint_dir / from_checkpoint).exists():
        return os.path.normpath(checkpoint_dir / from_checkpoint)
    resolved = manifest.get("base_model_path")
    return resolved if resolved and Path(resolved).exists() else given


def read_edited_tensors(checkpoint_dir: str | Path, manifest: dict) -> dict:
    """{parameter name: float32 tensor} of a checkpoint, after checking the file hash and the zero counts."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / WEIGHTS_FILE
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
    if set(tensors) != set(manifest["tensors"]):
        raise InputError(f"{path}: tensors {sorted(set(tensors) ^ set(manifest['tensors']))[:3]} differ from the "
                         "manifest's list")
    for name, t in tensors.items():
        if not bool(t.isfinite().all()):
            raise InputError(f"{path}: {name} holds NaN or inf")
    for layer, count in manifest.get("zeroed", {}).items():
        zeros = int((tensors[f"{layer}.weight"] == 0).sum())
        # >=: an entry of the base may already be zero; fewer zeros than were zeroed means corruption
        if zeros < int(count):
            raise InputError(f"{path}: {layer}.weight has {zeros} zero entries, fewer than the {count} the manifest "
                             "says were zeroed: the checkpoint is corrupted")
    return tensors


def load_edited_pipeline(checkpoint_dir: str | Path, base: str | Path | None = None, device: str = "auto",
                         dtype: str = "auto", scheduler: str | None = None):
    """A ready `StableDiffusionPipeline`: the base model with the checkpoint's tensors in place.

    `base` defaults to the manifest's. The base is loaded in float32 on the CPU (the hash is defined there), its
    UNet hash checked, edited, then moved to `device` / `dtype`."""
    import torch

    from memprune.models import load_pipeline, resolve_device, resolve_dtype

    checkpoint_dir = Path(checkpoint_dir)
    manifest = read_manifest(checkpoint_dir)
    base = str(base) if base is not None else _default_base(manifest, checkpoint_dir)
    tensors = read_edited_tensors(checkpoint_dir, manifest)
    pipe = load_pipeline(base, "cpu", "float32", scheduler)
    base_hash = unet_sha256(pipe.unet)
    if base_hash != manifest["base_unet_sha256"]:
        raise InputError(f"{checkpoint_dir}: edited from a UNet with sha256 {manifest['base_unet_sha256']}, but "
                         f"{base} has {base_hash}: load it with the model it was made from")
    state = pipe.unet.state_dict()
    for name, t in tensors.items():
        if name not in state:
            raise InputError(f"{checkpoint_dir}: {name!r} is not a parameter of {base}'s UNet")
        if tuple(t.shape) != tuple(state[name].shape):
            raise InputError(f"{checkpoint_dir}: {name} has shape {tuple(t.shape)}, {base} {tuple(state[name].shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t)
    device = resolve_device(device)
    pipe = pipe.to(device=device, dtype=resolve_dtype(dtype, device))
    log.info("loaded %s (%s edit by %s) on %s", checkpoint_dir, manifest["kind"], manifest.get("method"), base)
    return pipe


def export_pipeline(checkpoint_dir: str | Path, out: str | Path, base: str | Path | None = None,
                    dtype: str = "float32") -> Path:
    """Write the edited model as a full diffusers pipeline directory (safetensors) loadable with
    `StableDiffusionPipeline.from_pretrained(out)`, with a copy of the manifest; atomically."""
    from memprune.formats.store import atomic_dir

    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    pipe = load_edited_pipeline(checkpoint_dir, base=base, device="cpu", dtype=dtype)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        shutil.copyfile(checkpoint_dir / MANIFEST_FILE, tmp / EXPORTED_MANIFEST_FILE)
    return out
