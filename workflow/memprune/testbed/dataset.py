"""The testbed's synthetic dataset: scenes, duplicated photo crops and single-seen ones (see the package
docstring), written as PNG images with a `manifest.jsonl`; its digest, and loaders for training and scoring."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from memprune.formats.store import atomic_dir
from memprune.testbed.scenes import RESOLUTION, render_scene, scene_caption, scene_combinations

# Words for the photo captions. None of them occurs in the scene captions, so a photo caption never
# shares a content word with a compositional prompt. `generate_dataset` splits words and names, seeded, into
# two disjoint pools: one for the duplicated captions, one for the single-seen ones. With one shared pool a
# single-seen caption shared words with duplicated ones, and the model answered it with the duplicated photo
# (measured on the testbed trained on the shared pool: 22% of the 40 single captions sharing the most words
# with duplicated captions copied a duplicated photo, 2.5% of 40 captions of words no duplicated caption
# used), which is word association, not the memorization of images seen once that this control measures.
CAPTION_WORDS = (
    "amber", "ancient", "autumn", "bamboo", "beacon", "bronze", "cactus", "canyon", "castle", "cedar",
    "cellar", "chapel", "cinder", "citadel", "clover", "cobalt", "comet", "copper", "coral", "cottage",
    "crystal", "dawn", "desert", "dragon", "drift", "dune", "ember", "falcon", "feather", "fern",
    "festival", "fjord", "forest", "fountain", "frost", "galaxy", "garden", "glacier", "granite", "harbor",
    "harvest", "hazel", "heron", "horizon", "island", "ivory", "jade", "jungle", "lagoon", "lantern",
    "lava", "lemon", "lighthouse", "lotus", "marble", "meadow", "midnight", "mirror", "mist", "monsoon",
    "mosaic", "mountain", "nebula", "oasis", "ocean", "orchard", "orchid", "owl", "palace", "pebble",
    "pepper", "pine", "planet", "prairie", "quartz", "rain", "raven", "reef", "ribbon", "river",
    "ruby", "saffron", "sapphire", "savanna", "shadow", "silk", "silver", "sparrow", "spice", "spruce",
    "storm", "summit", "sunrise", "temple", "thunder", "tiger", "timber", "tulip", "tundra", "valley",
    "velvet", "violet", "volcano", "willow", "winter", "wolf", "zephyr", "lynx", "maple", "acorn",
    "anchor", "badger", "basil", "birch", "bison", "blossom", "boulder", "breeze", "candle", "caravan",
    "cavern", "cherry", "cliff", "cloud", "compass", "crane", "creek", "dolphin", "eagle", "echo",
    "fox", "garnet", "geyser", "ginger", "harp", "hollow", "iris", "kettle", "kite", "lake",
    "lily", "meteor", "moss", "nectar", "olive", "otter", "pearl", "pigeon", "plum", "poppy",
    "puffin", "quill", "reed", "sage", "salmon", "shell", "slate", "snow", "stone", "swan",
)
CAPTION_NAMES = (
    "ada", "bruno", "clara", "dmitri", "elena", "farid", "greta", "hugo", "ines", "jonas", "kira", "leon",
    "mara", "nils", "olga", "pavel", "quinn", "rosa", "soren", "tess", "ugo", "vera", "wim", "yara", "zeno",
)

PHOTO_SOURCES = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "colorwheel", "camera", "coins", "moon", "brick", "grass", "gravel", "cell",
)


@dataclass
class DatasetSpec:
    """Parameters of the synthetic dataset; the same spec and seed give byte-identical files."""

    seed: int = 0
    n_duplicated: int = 50  # K unique images, each repeated `duplication` times
    duplication: int = 30  # D
    n_single: int = 200  # unique photo crops seen once
    renders_per_scene: int = 6  # training renders (with jitter) of every non-held-out scene combination
    heldout_fraction: float = 0.15  # fraction of scene combinations never seen in training
    resolution: int = RESOLUTION


def _photo_pool() -> list[np.ndarray]:
    import skimage.data
    from skimage.color import gray2rgb

    pool = []
    for name in PHOTO_SOURCES:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = gray2rgb(img)
        pool.append(np.ascontiguousarray(img[..., :3]))
    return pool


def photo_crops(n: int, rng: np.random.Generator, resolution: int = RESOLUTION,
                max_similarity: float = 0.3, avoid: list[np.ndarray] = ()) -> list[np.ndarray]:
    """`n` distinct square crops (random source, size 48-192 px, position) resized to `resolution`.

    A crop is kept only if its SSIM to every crop kept before (and to every image of `avoid`, (H, W, 3) uint8:
    photos drawn earlier, e.g. a dataset's) is below `max_similarity`: overlapping crops of one photograph (or
    two patches of grass) would otherwise be near-copies of each other, and a "single-seen" image could be a
    duplicated one in disguise.
    """
    from skimage.transform import resize

    from memprune.evaluate.metrics import SsimReferences, ssim_matrix

    pool = _photo_pool()
    crops = []
    kept = SsimReferences(np.stack(avoid) if len(avoid) else np.empty((0, resolution, resolution, 3), np.uint8))
    for _ in range(200 * n):
        if len(crops) == n:
            break
        src = pool[rng.integers(len(pool))]
        side = int(rng.integers(48, min(192, *src.shape[:2]) + 1))
        r = int(rng.integers(0, src.shape[0] - side + 1))
        c = int(rng.integers(0, src.shape[1] - side + 1))
        crop = resize(src[r : r + side, c : c + side], (resolution, resolution), anti_aliasing=True)
        crop = (crop * 255).round().clip(0, 255).astype(np.uint8)
        if crop.std() < 12:  # flat crops (sky, page margins) are not distinctive images
            continue
        if len(kept) and ssim_matrix(crop[None], kept).max() >= max_similarity:
            continue
        crops.append(crop)
        kept.extend(crop[None])
    if len(crops) < n:
        raise ValueError(f"found only {len(crops)} of {n} mutually dissimilar photo crops")
    return crops


def photo_captions(n: int, rng: np.random.Generator, words: tuple[str, ...] = CAPTION_WORDS,
                   names: tuple[str, ...] = CAPTION_NAMES) -> list[str]:
    """`n` distinct captions like 'velvet harbor and ember falcon by clara', from `words` and `names`."""
    words = sorted(set(words))
    names = sorted(set(names))
    if len(words) < 4 or not names:
        raise ValueError(f"photo captions need at least 4 words and 1 name, got {len(words)} and {len(names)}")
    captions, seen = [], set()
    for _ in range(1000 * n):
        if len(captions) == n:
            break
        a, b, c, d = rng.choice(len(words), size=4, replace=False)
        name = names[rng.integers(len(names))]
        cap = f"{words[a]} {words[b]} and {words[c]} {words[d]} by {name}"
        if cap not in seen:
            seen.add(cap)
            captions.append(cap)
    if len(captions) < n:
        raise ValueError(f"only {len(captions)} of {n} distinct captions from {len(words)} words")
    return captions


def caption_pools(rng: np.random.Generator, duplicated_share: float = 0.5
                  ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Seeded split of the caption words and names into disjoint pools: (dup words, dup names, single words,
    single names), `duplicated_share` of each for the duplicated captions."""
    words = [CAPTION_WORDS[i] for i in rng.permutation(len(CAPTION_WORDS))]
    names = [CAPTION_NAMES[i] for i in rng.permutation(len(CAPTION_NAMES))]
    nw, nn = int(round(duplicated_share * len(words))), int(round(duplicated_share * len(names)))
    return tuple(words[:nw]), tuple(names[:nn]), tuple(words[nw:]), tuple(names[nn:])


def generate_dataset(spec: DatasetSpec, out_dir: Path) -> Path:
    """Write images and `manifest.jsonl` under `out_dir` (atomically); return the manifest path.

    Manifest rows: caption, image (path relative to out_dir), group (generalization / duplicated / single),
    duplication (training repeats), split (train / heldout), and for scenes their attributes.
    """
    from PIL import Image

    rng = np.random.default_rng(spec.seed)
    combos = scene_combinations()
    order = rng.permutation(len(combos))
    n_heldout = int(round(spec.heldout_fraction * len(combos)))
    heldout = set(order[:n_heldout].tolist())
    photos = photo_crops(spec.n_duplicated + spec.n_single, rng, spec.resolution)
    dup_words, dup_names, single_words, single_names = caption_pools(rng)
    captions = (photo_captions(spec.n_duplicated, rng, dup_words, dup_names)
                + photo_captions(spec.n_single, rng, single_words, single_names))

    rows = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()

        def save(img: np.ndarray, name: str) -> str:
            rel = f"images/{name}.png"
            Image.fromarray(img).save(tmp / rel, optimize=False)
            return rel

        for i, (img, cap) in enumerate(zip(photos, captions)):
            group = "duplicated" if i < spec.n_duplicated else "single"
            rows.append({
                "caption": cap, "image": save(img, f"photo_{i:04d}"), "group": group,
                "duplication": spec.duplication if group == "duplicated" else 1, "split": "train",
            })
        for ci, attrs in enumerate(combos):
            split = "heldout" if ci in heldout else "train"
            renders = 1 if split == "heldout" else spec.renders_per_scene
            for r in range(renders):
                img = render_scene(attrs, None if (split == "heldout" or r == 0) else rng, spec.resolution)
                rows.append({
                    "caption": scene_caption(attrs), "image": save(img, f"scene_{ci:04d}_{r}"),
                    "group": "generalization", "duplication": 1 if split == "train" else 0, "split": split,
                    **attrs,
                })
        write_rows(tmp, rows)
        (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out_dir / "manifest.jsonl"


def write_rows(out_dir: Path, rows: list[dict]) -> None:
    """A dataset's `manifest.jsonl` and its prompt sets `prompts/<name>.txt` (`prompt_lists`) in `out_dir`."""
    (out_dir / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out_dir / "prompts").mkdir()
    for name, lines in prompt_lists(rows).items():
        (out_dir / "prompts" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))


def prompt_lists(rows: list[dict]) -> dict[str, list[str]]:
    """The testbed's prompt sets, unique and in manifest order: duplicated (memorized), single (seen once),
    generalization (training scene captions: the non-memorized control set), heldout (unseen scenes), and any
    other group under its own name (a derived testbed's added photos: `derived.extend_dataset`)."""
    lists = {"duplicated": [], "single": [], "generalization": [], "heldout": []}
    for r in rows:
        key = (r["group"] if r["group"] != "generalization"
               else ("heldout" if r["split"] == "heldout" else "generalization"))
        if r["caption"] not in lists.setdefault(key, []):
            lists[key].append(r["caption"])
    return lists


def dataset_digest(data_dir: Path) -> str:
    """sha256 over the manifest and every image it names: identifies the data a testbed was trained on."""
    import hashlib

    data_dir = Path(data_dir)
    h = hashlib.sha256((data_dir / "manifest.jsonl").read_bytes())
    for row in read_manifest(data_dir / "manifest.jsonl"):
        h.update((data_dir / row["image"]).read_bytes())
    return h.hexdigest()


TRAIN_RECORD_NAME = "memprune_train.json"  # the record `train.train_testbed` writes next to a trained testbed


def check_trained_on(model_dir: Path, data_dir: Path, info_name: str = TRAIN_RECORD_NAME) -> None:
    """Refuse to measure with a testbed model (or, `info_name="memprune_clip.json"`, a testbed CLIP) against data
    other than what it was trained on: the `dataset_sha256` of its record must match `data_dir`, or the base
    of `data_dir` when that is a derived testbed's extended dataset (`derived.extend_dataset`: the same photos
    and captions, and the added ones, which a model trained on the base has never seen)."""
    from memprune.errors import InputError

    info_path = Path(model_dir) / info_name
    if not info_path.exists():
        return
    expected = json.loads(info_path.read_text()).get("dataset_sha256")
    spec_path = Path(data_dir) / "spec.json"
    base = json.loads(spec_path.read_text()).get("base_dataset_sha256") if spec_path.exists() else None
    if expected and expected != base and expected != dataset_digest(data_dir):
        raise InputError(
            f"{model_dir}: trained on another testbed dataset than {data_dir}, so not the dataset to measure it "
            f"on (dataset_sha256 {expected[:12]}... in {info_path}); regenerate the data with the model's "
            f"testbed.dataset config (delete it first if it came from an older memprune: Snakemake reruns the "
            f"dataset job when its config changes, not when the generator's code did) or retrain"
        )


def read_manifest(path: Path) -> list[dict]:
    from memprune.formats.prompts import read_jsonl

    return read_jsonl(Path(path), required=("caption", "image", "group"))


def read_checked_manifest(model_dir: Path, data_dir: Path) -> list[dict]:
    """The manifest rows of `data_dir` as the ground truth of `model_dir`: refused (`check_trained_on`) when the
    model is a testbed trained on another dataset, whose photos would score its copies wrongly."""
    check_trained_on(model_dir, data_dir)
    return read_manifest(Path(data_dir) / "manifest.jsonl")


def load_images(data_dir: Path, rows: list[dict]) -> np.ndarray:
    """(N, H, W, 3) uint8: the images of manifest `rows`, read from `data_dir`."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(data_dir / r["image"]).convert("RGB")) for r in rows])


def images_to_tensor(images: np.ndarray):
    """(N, H, W, 3) uint8 images -> (N, 3, H, W) float32 tensor in [-1, 1], the VAE's input range."""
    import torch

    return torch.from_numpy(images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)


def load_training_arrays(manifest: Path, exclude_groups: tuple[str, ...] = ()) -> tuple[np.ndarray, list[str]]:
    """Training images (N, 3, H, W) float32 in [-1, 1] and captions, duplicates expanded (consecutively); rows
    of `exclude_groups` left out."""
    from PIL import Image

    rows = read_manifest(manifest)
    images, captions = [], []
    for row in rows:
        if row["split"] != "train" or row["group"] in exclude_groups:
            continue
        img = np.asarray(Image.open(Path(manifest).parent / row["image"]).convert("RGB"), dtype=np.float32)
        img = img.transpose(2, 0, 1) / 127.5 - 1.0
        for _ in range(int(row["duplication"])):
            images.append(img)
            captions.append(row["caption"])
    return np.stack(images), captions
