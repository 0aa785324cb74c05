"""The weights localizers read, once per model: `layers.safetensors`.

A mask job needs only the layers its localizer observes (e.g. the 16 `ff.net.2` weights of SD1.5, not the
whole UNet) and the UNet's hash (the base its masks refer to). Building the UNet in every mask job costs a
diffusers import and a full load and hash; this file is written once by `memprune layers` (rule
`model_layers`) and read with safetensors and torch alone.

  <layer name>            float32 (out, in) weight, for every layer any registered localizer observes
  metadata `format`       "memprune-layers/1"
  metadata `base_unet_sha256`  `formats.edits.unet_sha256` of the whole UNet
  metadata `model`        the model directory or hub id
  metadata `observes`     JSON {observer: [layer names in its order]} for every registered localizer; an observer
                          is the localizer's `observes` function, named `module:qualname`, so localizers sharing
                          a function share one entry and the layers are still found by module type, never from
                          a list of names
  metadata `errors`       JSON {observer: why this UNet has no such layers}
"""

from __future__ import annotations

import json
from pathlib import Path

from memprune.errors import InputError

FORMAT = "memprune-layers/1"


def observer_name(observes) -> str:
    return f"{observes.__module__}:{observes.__qualname__}"


def write_layers(model: str | Path, out: str | Path) -> dict:
    """The weights observed by every registered localizer of `model`'s UNet, written atomically to `out`.

    Every localizer, not the configured ones: adding a localizer to a config then reruns no mask job. An
    observer that finds no layers in this UNet (e.g. no cross-attention for NeMo) is recorded with its error,
    which `read_layers` raises for a localizer that needs it."""
    from safetensors.torch import save_file

    from memprune import localize
    from memprune.formats.edits import load_unet, unet_sha256
    from memprune.formats.store import atomic_file

    unet = load_unet(model)
    observers = {}
    for name in localize.names():
        fn = localize.get(name).observes
        observers.setdefault(observer_name(fn), fn)
    tensors, observes, errors = {}, {}, {}
    for key, fn in sorted(observers.items()):
        try:
            layers = fn(unet)
        except InputError as e:
            errors[key] = str(e)
            continue
        observes[key] = [n for n, _ in layers]
        for n, lin in layers:
            tensors[n] = lin.weight.detach().to("cpu").float().contiguous()
    meta = {"format": FORMAT, "base_unet_sha256": unet_sha256(unet), "model": str(model),
            "observes": json.dumps(observes), "errors": json.dumps(errors)}
    with atomic_file(Path(out)) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return {"layers": len(tensors), "observers": sorted(observes), "errors": errors}


def read_layers(path: str | Path, observes) -> tuple[dict, str]:
    """({layer name: float32 torch weight} in the observer's order, the UNet's hash) for a localizer's
    `observes` function, from a file of `write_layers`."""
    from safetensors import SafetensorError, safe_open

    key = observer_name(observes)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            names = json.loads(meta["observes"]).get(key)
            error = json.loads(meta.get("errors", "{}")).get(key)
            tensors = None if names is None else {n: f.get_tensor(n) for n in names}
            base_hash = meta["base_unet_sha256"]
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise InputError(f"{path}: not a memprune layers file ({e}); rebuild it with `memprune layers`") from None
    if error:
        raise InputError(error)
    if tensors is None:
        raise InputError(f"{path}: holds no layers observed by {key} (written before that localizer existed?); "
                         "rebuild it with `memprune layers`")
    return tensors, base_hash
