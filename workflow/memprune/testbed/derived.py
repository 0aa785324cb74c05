"""Testbeds derived from the shipped one: new photos added to its dataset, and a model whose only new part is
its UNet.

* `AddedSpec` / `extend_dataset`: the base dataset plus K new photos (group "planted" or "finetuned"), each
  repeated `duplication` times in training, drawn by `new_photos` (new crops, SSIM < 0.3 to every
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

import numpy as np

from memprune.models import BASE_FILE, base_of, is_derived  # noqa: F401  (the loader's side of the format)
from memprune.errors import InputError
from memprune.formats.store import atomic_dir
from memprune.testbed.dataset import (
    CAPTION_NAMES,
    CAPTION_WORDS,
    dataset_digest,
    load_images,
    photo_crops,
    read_manifest,
    write_rows,
)
from memprune.testbed.scenes import RESOLUTION

GROUPS = ("planted", "finetuned")
_PHOTO_STREAM = 0x504C414E  # "PLAN": new photos draw from their own stream, never the dataset's or training's


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


def extend_dataset(base_data: Path, spec: AddedSpec, out_dir: Path) -> Path:
    """Write the base dataset plus `spec.k` new photos to `out_dir` atomically; return its manifest path.
    New rows: {caption, image: images/<group>_<i>.png, group, duplication, split: train}."""
    from PIL import Image

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
        write_rows(tmp, rows + new_rows)
        base_spec = json.loads((base_data / "spec.json").read_text()) if (base_data / "spec.json").exists() else {}
        (tmp / "spec.json").write_text(json.dumps({**base_spec, "added": asdict(spec),
                                                   "base_dataset_sha256": dataset_digest(base_data)}, indent=2) + "\n")
    return out_dir / "manifest.jsonl"


def added_rows(data_dir: Path, group: str | None = None) -> list[dict]:
    """The manifest rows of the added photos of `data_dir` (of `group`, or of any added group)."""
    return [r for r in read_manifest(Path(data_dir) / "manifest.jsonl")
            if (r["group"] == group if group else r["group"] in GROUPS)]


def save_derived(out_dir: Path, unet, base_dir: Path, record: dict,
                 extra_files: dict[str, bytes] | None = None) -> None:
    """Write a derived model atomically: `unet/`, `memprune_base.json` (base as a path relative to `out_dir`,
    its UNet hash), `memprune_train.json` = `record`, and `extra_files` {relative path: bytes}."""
    from memprune.formats.edits import load_unet, unet_sha256
    from memprune.testbed.dataset import TRAIN_RECORD_NAME

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
    from memprune.testbed.dataset import TRAIN_RECORD_NAME

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


def _caption_words(caption: str) -> tuple[set[str], str]:
    """'velvet harbor and ember falcon by clara' -> ({velvet, harbor, ember, falcon}, 'clara')."""
    head, _, name = caption.rpartition(" by ")
    return {w for w in head.split() if w != "and"}, name


def new_photos(data_dir: Path, k: int, seed: int, pool: str = "duplicated") -> tuple[np.ndarray, list[str]]:
    """K new photo crops and captions for the dataset in `data_dir`: images (K, H, W, 3) uint8, captions.

    The crops follow the dataset's own rule (`dataset.photo_crops`): SSIM < 0.3 to every photo of the dataset
    (duplicated and single) and to each other. The captions follow its grammar ('w1 w2 and w3 w4 by name') with
    the words and names of one of the dataset's two disjoint caption pools (`pool`: "duplicated", those no
    single-seen caption uses, or "single", those no duplicated caption uses; a caption sharing words with a
    trained one is answered with that one's photo: see `dataset.CAPTION_WORDS`, `derived.AddedSpec.caption_pool`),
    equal to no dataset caption, and sharing at most one word with any dataset photo caption or with each other.
    Deterministic for a seed (the photos do not depend on `pool`)."""
    if pool not in ("single", "duplicated"):
        raise InputError(f"planted: caption pool {pool!r}: expected 'single' or 'duplicated'")
    rows = read_manifest(Path(data_dir) / "manifest.jsonl")
    photo_rows = [r for r in rows if r["group"] in ("duplicated", "single")]
    rng = np.random.default_rng([seed, _PHOTO_STREAM])
    existing = list(load_images(Path(data_dir), photo_rows)) if photo_rows else []
    try:
        images = np.stack(photo_crops(k, rng, existing[0].shape[0] if existing else RESOLUTION, avoid=existing))
    except ValueError as e:
        raise InputError(f"{data_dir}: {e} beside the dataset's {len(existing)} photos") from None

    taken = [_caption_words(r["caption"]) for r in photo_rows]
    other = "duplicated" if pool == "single" else "single"  # the group whose words are left out
    used_words = set().union(*[w for (w, _), r in zip(taken, photo_rows) if r["group"] == other])
    used_names = {n for (_, n), r in zip(taken, photo_rows) if r["group"] == other}
    words = sorted(set(CAPTION_WORDS) - used_words)
    names = sorted(set(CAPTION_NAMES) - used_names)
    if len(words) < 4 or not names:
        raise InputError(f"{data_dir}: too few caption words ({len(words)}) or names ({len(names)}) outside the "
                         f"{other} captions for new captions")
    existing_captions = {r["caption"] for r in rows}
    others = [w for w, _ in taken]
    captions: list[str] = []
    for _ in range(2000 * k):
        if len(captions) == k:
            break
        a, b, c, d = rng.choice(len(words), size=4, replace=False)
        cap = f"{words[a]} {words[b]} and {words[c]} {words[d]} by {names[rng.integers(len(names))]}"
        chosen = {words[a], words[b], words[c], words[d]}
        if cap in existing_captions or any(len(chosen & o) > 1 for o in others):
            continue
        captions.append(cap)
        others.append(chosen)
    if len(captions) < k:
        raise InputError(f"{data_dir}: found only {len(captions)} of {k} new captions sharing <= 1 word with the "
                         "dataset's")
    return images, captions
