"""Testbeds derived from the shipped one: new photos added to its dataset, and a model whose only new part is
its UNet.

* `AddedSpec` / `extend_dataset`: the base dataset plus K new photos (group "planted" or "finetuned"), each
  repeated `duplication` times in training, drawn by `planted.new_photos` (new crops, SSIM < 0.3 to every
  dataset photo; captions of the dataset's grammar). The extended dataset is an ordinary testbed dataset:
  `manifest.jsonl`, `images/`, `prompts/<group>.txt`, so evaluation, the attack and `check_trained_on` read it
  unchanged. Deterministic: a spec and a base dataset give the same bytes, so the shipped models' recorded
  `dataset_sha256` is reproduced by `memprune extend-data`.
* A derived model directory holds `unet/` (diffusers' layout), `memprune_base.json` (the base pipeline it
  borrows the text encoder, tokenizer, VAE and scheduler from, as a path relative to itself, and that
  base's UNet hash) and `memprune_train.json` (its record, with the extended dataset's digest).
  `models.load_pipeline` loads it as a whole pipeline; a derived model adds only its UNet to the repository.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..prompts import InputError, json_object
from ..store import atomic_dir

BASE_FILE = "memprune_base.json"
GROUPS = ("planted", "finetuned")


@dataclass
class AddedSpec:
    group: str = "planted"  # manifest group of the new photos (and name of their prompt file)
    k: int = 50  # new photos
    duplication: int = 1  # training repeats of each new photo (the finetune testbed's D)
    seed: int = 0  # photos and captions
    # The new captions' words: those of the duplicated captions (or "single": of the single-seen ones).
    # Measured on the shipped testbed (planted, r 5%, K 10, 1,200 steps): with single-seen words, 13% of
    # single-seen prompts then copied (half of their nearest photos planted ones); with duplicated words 1%, and
    # the duplicated prompts still all copied their own photos. The price: the base model answers 9 of 10 such
    # captions with a duplicated photo, and so does the planted model once its planted units are zeroed.
    caption_pool: str = "duplicated"

    def __post_init__(self):
        if self.group not in GROUPS:
            raise InputError(f"added photos: group {self.group!r}: expected one of {list(GROUPS)}")
        if self.k < 1 or self.duplication < 1:
            raise InputError(f"added photos: k ({self.k}) and duplication ({self.duplication}) must be >= 1")


def added_spec(text_or_dict) -> AddedSpec:
    """An AddedSpec from a JSON object (text or dict); an InputError naming the bad field."""
    fields = json_object(text_or_dict) if isinstance(text_or_dict, str) else dict(text_or_dict)
    try:
        return AddedSpec(**fields)
    except TypeError as e:
        raise InputError(f"added photos spec: {e} (fields: {', '.join(AddedSpec.__dataclass_fields__)})") from None


def extend_dataset(base_data: Path, spec: AddedSpec, out_dir: Path) -> Path:
    """Write the base dataset plus `spec.k` new photos to `out_dir` atomically; return its manifest path.
    New rows: {caption, image: images/<group>_<i>.png, group, duplication, split: train}."""
    from PIL import Image

    from .dataset import dataset_digest, prompt_lists, read_manifest
    from .planted import new_photos

    base_data, out_dir = Path(base_data), Path(out_dir)
    rows = read_manifest(base_data / "manifest.jsonl")
    clash = sorted({r["group"] for r in rows} & set(GROUPS))
    if clash:
        raise InputError(f"{base_data}: already holds added photos (group {clash[0]!r}); extend the base dataset")
    photos, captions = new_photos(base_data, spec.k, spec.seed, spec.caption_pool)
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(base_data / "images", tmp / "images")
        new_rows = []
        for i, (img, cap) in enumerate(zip(photos, captions)):
            rel = f"images/{spec.group}_{i:04d}.png"
            Image.fromarray(img).save(tmp / rel, optimize=False)
            new_rows.append({"caption": cap, "image": rel, "group": spec.group, "duplication": spec.duplication,
                             "split": "train"})
        all_rows = rows + new_rows
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in all_rows))
        (tmp / "prompts").mkdir()
        for name, lines in prompt_lists(all_rows).items():
            (tmp / "prompts" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
        base_spec = json.loads((base_data / "spec.json").read_text()) if (base_data / "spec.json").exists() else {}
        (tmp / "spec.json").write_text(json.dumps({**base_spec, "added": asdict(spec),
                                                   "base_dataset_sha256": dataset_digest(base_data)}, indent=2) + "\n")
    return out_dir / "manifest.jsonl"


def added_rows(data_dir: Path, group: str | None = None) -> list[dict]:
    """The manifest rows of the added photos of `data_dir` (of `group`, or of any added group)."""
    from .dataset import read_manifest

    return [r for r in read_manifest(Path(data_dir) / "manifest.jsonl")
            if (r["group"] == group if group else r["group"] in GROUPS)]


def is_derived(model_dir: str | Path) -> bool:
    return (Path(model_dir) / BASE_FILE).is_file()


def base_of(model_dir: str | Path) -> Path:
    """The base pipeline directory of a derived model; an InputError naming the file when unreadable or gone."""
    path = Path(model_dir) / BASE_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        base = (Path(model_dir) / info["base"]).resolve()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable derived-model record ({type(e).__name__}: {e})") from None
    if not (base / "model_index.json").is_file():
        raise InputError(f"{path}: its base {info['base']!r} ({base}) is not a diffusers pipeline directory")
    return base


def save_derived(out_dir: Path, unet, base_dir: Path, record: dict, extra_files: dict[str, bytes] | None = None) -> None:
    """Write a derived model atomically: `unet/`, `memprune_base.json` (base as a path relative to `out_dir`,
    its UNet hash), `memprune_train.json` = `record`, and `extra_files` {relative path: bytes}."""
    from ..edits import load_unet, unet_sha256
    from .dataset import TRAIN_RECORD_NAME

    out_dir, base_dir = Path(out_dir), Path(base_dir)
    if is_derived(base_dir):
        raise InputError(f"{base_dir}: a derived model cannot be the base of another (use its base)")
    base_hash = unet_sha256(load_unet(base_dir))
    rel = os.path.relpath(base_dir.resolve(), out_dir.resolve().parent / out_dir.name)
    with atomic_dir(out_dir) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / BASE_FILE).write_text(json.dumps({"base": rel, "base_unet_sha256": base_hash, "replaces": ["unet"]},
                                                indent=2) + "\n")
        (tmp / TRAIN_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)


def check_extends(model_dir: Path, data_dir: Path, group: str) -> dict:
    """Refuse to derive a testbed from `model_dir` with the extended dataset `data_dir` unless the model was
    trained on its base part and it holds added photos of `group`; returns the dataset's spec.json."""
    from .dataset import TRAIN_RECORD_NAME

    spec_path = Path(data_dir) / "spec.json"
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{spec_path}: not an extended testbed dataset ({type(e).__name__}); make one with "
                         "`memprune extend-data`") from None
    if spec.get("added", {}).get("group") != group:
        raise InputError(f"{spec_path}: holds no added photos of group {group!r} (added: {spec.get('added')})")
    record = Path(model_dir) / TRAIN_RECORD_NAME
    if record.exists():
        expected = json.loads(record.read_text()).get("dataset_sha256")
        if expected and expected != spec.get("base_dataset_sha256"):
            raise InputError(f"{model_dir}: trained on another dataset than the base of {data_dir} "
                             f"(dataset_sha256 {expected[:12]}... in {record})")
    return spec
