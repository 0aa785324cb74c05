"""The embedded default model: a tiny Stable-Diffusion-structured text-to-image pipeline that memorizes.

Memorization is planted the way it happens in the wild: some training images are duplicated many times.
The synthetic dataset has three groups (see :func:`generate_dataset`):

* ``generalization``: compositional scenes (shape x colour x position x background) with captions; a
  seeded fraction of the combinations is held out of training, to measure how well the model still
  generates (prompt following);
* ``duplicated``: K photo crops (scikit-image's bundled photographs), each with its own caption, repeated
  D times in training: the images the model is meant to copy;
* ``single``: photo crops seen once, the control for copies that should *not* happen.

The model (:func:`build_pipeline`) is a real ``diffusers.StableDiffusionPipeline``: an ``AutoencoderKL``
trained on the data (32x32 RGB -> 8x8x4 latents, which makes each UNet step ~16x cheaper than pixel space),
a ``UNet2DConditionModel`` with SD's ``CrossAttnDownBlock2D``/``CrossAttnUpBlock2D`` blocks and GEGLU
feed-forwards, a ``CLIPTextModel`` and CLIP's real BPE tokenizer built offline.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

import numpy as np

from .store import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

RESOLUTION = 32

# ---------------------------------------------------------------------------------------------- dataset

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "magenta": (210, 50, 200),
    "cyan": (50, 210, 220),
}
BACKGROUNDS = {"black": (10, 10, 10), "white": (245, 245, 245), "gray": (128, 128, 128)}
# Anchor (row, col) of the shape centre, in a 32x32 image.
POSITIONS = {"left": (16, 8), "right": (16, 24), "top": (8, 16), "bottom": (24, 16), "center": (16, 16)}

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


def scene_combinations() -> list[dict]:
    """Every (shape, colour, position, background) combination, in a fixed order."""
    return [
        {"shape": s, "colour": c, "position": p, "background": b}
        for s in SHAPES
        for c in COLOURS
        for p in POSITIONS
        for b in BACKGROUNDS
    ]


def scene_caption(attrs: dict) -> str:
    return f"a {attrs['colour']} {attrs['shape']} at the {attrs['position']} on a {attrs['background']} background"


def shape_mask(shape: str, centre: tuple[float, float], size: float, resolution: int = RESOLUTION) -> np.ndarray:
    """Boolean (H, W) mask of a shape of half-extent `size` centred at `centre` (row, col)."""
    rows, cols = np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5
    dr, dc = rows - centre[0], cols - centre[1]
    if shape == "circle":
        return dr**2 + dc**2 <= size**2
    if shape == "square":
        return (np.abs(dr) <= size * 0.85) & (np.abs(dc) <= size * 0.85)
    if shape == "triangle":  # apex up: width grows linearly from the top edge to the base
        inside_rows = (dr >= -size) & (dr <= size)
        half_width = (dr + size) / 2
        return inside_rows & (np.abs(dc) <= half_width)
    if shape == "cross":
        arm = size / 3
        return ((np.abs(dr) <= arm) & (np.abs(dc) <= size)) | ((np.abs(dc) <= arm) & (np.abs(dr) <= size))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_scene(attrs: dict, rng: np.random.Generator | None = None, resolution: int = RESOLUTION) -> np.ndarray:
    """(H, W, 3) uint8 image of a scene; `rng` adds a small jitter of position and size."""
    centre = np.array(POSITIONS[attrs["position"]], dtype=np.float32) * resolution / RESOLUTION
    size = 7.0 * resolution / RESOLUTION
    if rng is not None:
        centre = centre + rng.uniform(-1.5, 1.5, size=2)
        size = size * rng.uniform(0.9, 1.1)
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[attrs["background"]]
    image[shape_mask(attrs["shape"], tuple(centre), size, resolution)] = COLOURS[attrs["colour"]]
    return image


def describe_scene(image: np.ndarray) -> dict:
    """Read (shape, colour, position, background) back off an (H, W, 3) uint8 image.

    Background: the nearest palette colour to the median border pixel. Colour: the nearest palette colour
    to the median of the most contrasting pixels. Foreground: pixels beyond half that contrast; position =
    the nearest anchor to their centroid; shape = the best-matching blurred template (`_match_shape`).
    Used to score prompt following of generated scenes, no learned classifier needed.
    """
    img = image.astype(np.float32)
    res = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = min(BACKGROUNDS, key=lambda k: np.sum((np.array(BACKGROUNDS[k]) - bg_rgb) ** 2))
    bg_palette = np.array(BACKGROUNDS[background], dtype=np.float32)
    dist = np.sqrt(((img - bg_palette) ** 2).sum(-1))
    if dist.max() < 60.0:
        return {"shape": None, "colour": None, "position": None, "background": background}
    # colour from the most contrasting pixels; edges blend with the background
    fg_rgb = np.median(img[dist >= 0.7 * dist.max()], axis=0)
    colour = min(COLOURS, key=lambda k: np.sum((np.array(COLOURS[k]) - fg_rgb) ** 2))
    # foreground at half contrast (robust to blur, whatever the background's contrast with the colour)
    contrast = float(np.sqrt(((np.array(COLOURS[colour], dtype=np.float32) - bg_palette) ** 2).sum()))
    fg = dist > 0.5 * contrast
    if fg.sum() < 4:
        return {"shape": None, "colour": colour, "position": None, "background": background}
    rows, cols = np.nonzero(fg)
    centre = (rows.mean() + 0.5, cols.mean() + 0.5)
    scale = RESOLUTION / res
    position = min(
        POSITIONS, key=lambda k: (POSITIONS[k][0] - centre[0] * scale) ** 2 + (POSITIONS[k][1] - centre[1] * scale) ** 2
    )
    shape = _match_shape(img, bg_palette, np.array(COLOURS[colour], dtype=np.float32), fg)
    return {"shape": shape, "colour": colour, "position": position, "background": background}


def _match_shape(img: np.ndarray, bg: np.ndarray, fg_colour: np.ndarray, fg: np.ndarray) -> str:
    """The shape whose template, blurred like a decoded image (Gaussian, sigma 1 px) and drawn at the
    foreground's box centre and extent (a few sizes and half-pixel shifts), is closest (L2) to the image's
    foreground opacity: the projection of each pixel on the background -> colour segment."""
    from scipy.ndimage import gaussian_filter

    v = fg_colour - bg
    alpha = np.clip(((img - bg) @ v) / (v @ v), 0.0, 1.0)
    rows, cols = np.nonzero(fg)
    centre = ((rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2)
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / 2

    def error(shape: str) -> float:
        return min(
            float(((gaussian_filter(shape_mask(shape, (centre[0] + dr, centre[1] + dc), extent * scale, img.shape[0])
                                    .astype(np.float32), 1.0) - alpha) ** 2).sum())
            for scale in (0.85, 1.0, 1.15, 1 / 0.85) for dr in (-0.5, 0.0, 0.5) for dc in (-0.5, 0.0, 0.5)
        )

    return min(SHAPES, key=error)


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
                max_similarity: float = 0.3) -> list[np.ndarray]:
    """`n` distinct square crops (random source, size 48-192 px, position) resized to `resolution`.

    A crop is kept only if its SSIM to every crop kept before is below `max_similarity`: overlapping
    crops of one photograph (or two patches of grass) would otherwise be near-copies of each other, and a
    "single-seen" image could be a duplicated one in disguise.
    """
    from skimage.transform import resize

    from .metrics import ssim_matrix

    pool = _photo_pool()
    crops = []
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
        if crops and ssim_matrix(crop[None], np.stack(crops)).max() >= max_similarity:
            continue
        crops.append(crop)
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
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "prompts").mkdir()
        for name, lines in prompt_lists(rows).items():
            (tmp / "prompts" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
        (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out_dir / "manifest.jsonl"


def prompt_lists(rows: list[dict]) -> dict[str, list[str]]:
    """The testbed's prompt sets, unique and in manifest order: duplicated (memorized), single (seen once),
    generalization (training scene captions: the non-memorized control set), heldout (unseen scenes)."""
    lists = {"duplicated": [], "single": [], "generalization": [], "heldout": []}
    for r in rows:
        key = r["group"] if r["group"] != "generalization" else ("heldout" if r["split"] == "heldout" else "generalization")
        if r["caption"] not in lists[key]:
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


def check_trained_on(model_dir: Path, data_dir: Path, info_name: str = "memprune_train.json") -> None:
    """Refuse to measure with a testbed model (or, `info_name="memprune_clip.json"`, a testbed CLIP) against data
    other than what it was trained on: the `dataset_sha256` of its record must match `data_dir`."""
    from .prompts import InputError

    info_path = Path(model_dir) / info_name
    if not info_path.exists():
        return
    expected = json.loads(info_path.read_text()).get("dataset_sha256")
    if expected and expected != dataset_digest(data_dir):
        raise InputError(
            f"{model_dir}: trained on another testbed dataset than {data_dir}, so not the dataset to measure it "
            f"on (dataset_sha256 {expected[:12]}... in {info_path}); regenerate the data with the model's "
            f"testbed.dataset config (delete it first if it came from an older memprune: Snakemake reruns the "
            f"dataset job when its config changes, not when the generator's code did) or retrain"
        )


def read_manifest(path: Path) -> list[dict]:
    from .prompts import read_jsonl

    return read_jsonl(Path(path), required=("caption", "image", "group"))


def read_ground_truth(model_dir: Path, data_dir: Path) -> list[dict]:
    """The manifest rows of `data_dir` as the ground truth of `model_dir`: refused (`check_trained_on`) when the
    model is a testbed trained on another dataset, whose photos would score its copies wrongly."""
    check_trained_on(model_dir, data_dir)
    return read_manifest(Path(data_dir) / "manifest.jsonl")


def images_to_tensor(images: np.ndarray):
    """(N, H, W, 3) uint8 images -> (N, 3, H, W) float32 tensor in [-1, 1], the VAE's input range."""
    import torch

    return torch.from_numpy(images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)


def load_training_arrays(manifest: Path) -> tuple[np.ndarray, list[str]]:
    """Training images (N, 3, H, W) float32 in [-1, 1] and captions, duplicates expanded (consecutively)."""
    from PIL import Image

    rows = read_manifest(manifest)
    images, captions = [], []
    for row in rows:
        if row["split"] != "train":
            continue
        img = np.asarray(Image.open(Path(manifest).parent / row["image"]).convert("RGB"), dtype=np.float32)
        img = img.transpose(2, 0, 1) / 127.5 - 1.0
        for _ in range(int(row["duplication"])):
            images.append(img)
            captions.append(row["caption"])
    return np.stack(images), captions


# ---------------------------------------------------------------------------------------------- model


def build_tokenizer(bpe_path: Path, max_length: int = 32):
    """CLIP's real BPE tokenizer, built offline from the `bpe_simple_vocab_16e6.txt.gz` that CLIP/open_clip
    ship: the same byte-level vocabulary construction as CLIP's `SimpleTokenizer` (256 bytes, their `</w>`
    forms, one token per merge, then the two special tokens)."""
    from transformers import CLIPTokenizer

    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@dataclass
class ModelSpec:
    unet_channels: tuple[int, ...] = (48, 96)
    text_hidden: int = 64
    text_layers: int = 2
    vae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 8  # 4 channels lost the scenes' colours and shapes (measured: 30% read back)
    max_length: int = 20  # the longest testbed caption is 13 tokens with its start/end tokens


def build_vae(spec: ModelSpec):
    from diffusers import AutoencoderKL

    n = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=spec.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(spec.vae_channels), layers_per_block=1, norm_num_groups=16,
        sample_size=RESOLUTION,
    )


def build_unet(spec: ModelSpec, latent_size: int):
    """SD1.5's UNet layout in miniature: CrossAttn blocks with GEGLU feed-forwards in down, mid and up."""
    from diffusers import UNet2DConditionModel

    n = len(spec.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=spec.latent_channels, out_channels=spec.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(spec.unet_channels), layers_per_block=1, cross_attention_dim=spec.text_hidden,
        attention_head_dim=8, norm_num_groups=16,
    )


def build_text_encoder(spec: ModelSpec, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers, num_attention_heads=4, max_position_embeddings=spec.max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def make_train_scheduler():
    from diffusers import DDPMScheduler

    # Stable Diffusion's noise schedule.
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def make_sampling_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def assemble_pipeline(vae, unet, text_encoder, tokenizer, scheduler=None):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler or make_sampling_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


# ---------------------------------------------------------------------------------------------- training


@dataclass
class TrainSpec:
    seed: int = 0
    vae_steps: int = 3000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 8000  # warmup, then cosine decay of the learning rate to 0.1 x lr
    cooldown_steps: int = 1000  # then this many more steps at 0.1 x lr (see train_testbed)
    batch_size: int = 64
    lr: float = 6e-4
    warmup: int = 200
    cond_dropout: float = 0.1  # captions replaced by "" so classifier-free guidance works
    decoder_steps: int = 2000  # final stage: decoder fine-tuning on frozen latents (see finetune_decoder)
    threads: int = 0  # 0: leave torch's default
    ema_decay: float = 0.0  # >0: keep an exponential moving average of UNet + text encoder weights and save it
    device: str = "cpu"  # "cpu", "cuda", or "auto"; the random draws are made on the CPU, so they match
    checkpoint_every: int = 0  # >0: also save the pipeline every N UNet steps under <out>.checkpoints/
    compile: bool = True  # torch.compile the UNet for training on CPU: a step 0.36 -> 0.28 s, ~3 min to compile
    model: ModelSpec = field(default_factory=ModelSpec)


def train_testbed(manifest: Path, out_dir: Path, spec: TrainSpec, bpe_path: Path, progress: bool = True) -> Path:
    """Train VAE, then UNet + text encoder on the dataset; save the pipeline to `out_dir` atomically."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from .models import resolve_device

    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    dev = torch.device(resolve_device(spec.device))
    images_np, captions = load_training_arrays(manifest)
    images = torch.from_numpy(images_np).to(dev)
    n = len(images)
    log.info("training set: %d samples (%d unique captions)", n, len(set(captions)))

    tokenizer = build_tokenizer(bpe_path, spec.model.max_length)
    vae = build_vae(spec.model).to(dev)
    t0 = time.time()

    # --- VAE: reconstruction (L1 + L2) with a tiny KL term, as a near-deterministic autoencoder, trained on
    # the distinct images (duplicates would bias it towards the 50 repeated photos, at the scenes' expense).
    distinct = torch.from_numpy(np.unique(images_np.reshape(n, -1), axis=0, return_index=True)[1])
    log.info("vae: %d distinct images", len(distinct))
    opt = torch.optim.AdamW(vae.parameters(), lr=spec.vae_lr, weight_decay=0.0)
    bar = tqdm(range(spec.vae_steps), desc="vae", disable=not progress, mininterval=5)
    for step in bar:
        idx = distinct[torch.randint(0, len(distinct), (spec.vae_batch,), generator=gen)]
        x = images[idx.to(dev)]
        post = vae.encode(x).latent_dist
        z = post.sample(generator=None)
        rec = vae.decode(z).sample
        kl = post.kl().mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + spec.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:  # cosine decay
            g["lr"] = spec.vae_lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / spec.vae_steps))
        if step % 100 == 0:
            log.info("vae step %d loss %.4f kl %.1f", step, loss.item(), kl.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    if spec.checkpoint_every:
        with atomic_dir(Path(str(out_dir) + ".checkpoints") / "vae") as tmp:
            vae.save_pretrained(tmp, safe_serialization=True)

    # Encode the unique images once; the latent scale makes latents unit-variance as in SD.
    with torch.no_grad():
        latents_mean = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, n, 256)])
    scaling = float(1.0 / latents_mean.std())
    vae.register_to_config(scaling_factor=scaling)
    latents_mean = latents_mean * scaling
    log.info("vae done in %.0fs; latent shape %s, scaling factor %.4f", time.time() - t0, tuple(latents_mean.shape[1:]), scaling)

    # --- UNet + text encoder: epsilon prediction with SD's schedule.
    unet = build_unet(spec.model, latents_mean.shape[-1]).to(dev)
    if dev.type == "cpu":
        # Plain attention (bmm + softmax): with 8-dim heads over 64 or 16 tokens, torch's CPU SDPA kernel made a
        # training step 12-22% slower (measured at batch 64: 0.29-0.31 s against 0.32-0.36 s). Same maths.
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    # Prompt following is learned late: on the shipped recipe's checkpoints, held-out scenes had the requested
    # position in 12% / 46% / 83% of samples after 4,000 / 6,000 / 8,000 steps, and 1,000 more steps at the
    # final learning rate raised it to 89% (prompt following 63% -> 69%, guidance 4): hence the cool-down.
    total_steps = spec.unet_steps + spec.cooldown_steps
    forward = unet
    if spec.compile and dev.type == "cpu" and total_steps >= 1000:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # no C++ compiler, unsupported op: train eagerly instead
        forward = torch.compile(unet)
    text_encoder = build_text_encoder(spec.model, tokenizer).to(dev)
    noise_sched = make_train_scheduler()
    ids = tokenizer(captions, padding="max_length", max_length=spec.model.max_length, truncation=True, return_tensors="pt").input_ids
    null_ids = tokenizer([""], padding="max_length", max_length=spec.model.max_length, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=1e-4)
    ema = [p.detach().clone() for p in params] if spec.ema_decay > 0 else None
    alphas = noise_sched.alphas_cumprod.to(dev)
    bar = tqdm(range(total_steps), desc="unet", disable=not progress, mininterval=5)
    t1 = time.time()
    ema_loss = None
    for step in bar:
        idx = torch.randint(0, n, (spec.batch_size,), generator=gen)
        z0 = latents_mean[idx.to(dev)]
        tok = ids[idx].clone()
        drop = torch.rand(spec.batch_size, generator=gen) < spec.cond_dropout
        tok[drop] = null_ids[0]
        tok = tok.to(dev)
        noise = torch.randn(z0.shape, generator=gen).to(dev)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (spec.batch_size,), generator=gen).to(dev)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(tok)[0]
        pred = forward(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = spec.lr * min(1.0, (step + 1) / spec.warmup)
        lr *= 0.5 * (1 + math.cos(math.pi * min(step, spec.unet_steps) / spec.unet_steps)) * 0.9 + 0.1
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - spec.ema_decay)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if spec.checkpoint_every and (step + 1) % spec.checkpoint_every == 0 and step + 1 < total_steps:
            ckpt = Path(str(out_dir) + ".checkpoints") / f"step_{step + 1}"
            with atomic_dir(ckpt) as tmp:
                assemble_pipeline(vae, unet, text_encoder, tokenizer).save_pretrained(tmp, safe_serialization=True)
            log.info("checkpoint %s", ckpt)
        if step % 100 == 0:
            log.info("unet step %d loss %.4f (ema %.4f) lr %.2e %.2fs/step", step, loss.item(), ema_loss, lr,
                     (time.time() - t1) / (step + 1))
            bar.set_postfix(loss=f"{ema_loss:.4f}")
    log.info("unet done in %.0fs", time.time() - t1)
    if ema is not None:  # the averaged weights are the model
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)

    if dev.type == "cpu":  # back to diffusers' default, as from_pretrained sets it
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
    finetune_decoder(vae, images_np, captions, spec.decoder_steps, spec.vae_lr / 2, spec.seed, progress)
    pipe = assemble_pipeline(vae.cpu(), unet.eval().cpu(), text_encoder.eval().cpu(), tokenizer)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "memprune_train.json").write_text(json.dumps({
            "train": asdict(spec), "samples": n, "seconds": round(time.time() - t0, 1),
            "dataset_sha256": dataset_digest(Path(manifest).parent),
            "final_ema_loss": ema_loss,
        }, indent=2) + "\n")
    return out_dir


def finetune_decoder(vae, images_np: np.ndarray, captions: list[str], steps: int, lr: float = 5e-4,
                     seed: int = 0, progress: bool = True) -> None:
    """Fine-tune the VAE decoder with the encoder frozen (as Stable Diffusion's ft-MSE decoder): the latent
    space the UNet was trained on does not move, only its decoding improves.

    Each batch is half scenes, half photos. The scenes are fresh renders (new jitter at every step) of the
    scene combinations in the training set, never of held-out ones; the photos are the distinct training
    photos. Measured on the shipped testbed's 54 held-out scenes (rendered, encoded, decoded, read back by
    `describe_scene`): the decoder trained with the VAE read back 61-67% of them; the earlier version of
    this stage (fixed training renders, 3,000 steps) 76%; 4,000 more steps of this one 83%, while the SSIM
    of decoded training photos rose 0.73 -> 0.79.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    if steps <= 0:
        return
    gen = torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 1)
    dev = next(vae.parameters()).device
    n = len(images_np)
    distinct = np.unique(images_np.reshape(n, -1), axis=0, return_index=True)[1]
    scenes = sorted({captions[i] for i in distinct if captions[i] in _SCENE_ATTRS})
    photos = torch.from_numpy(images_np[[i for i in distinct if captions[i] not in _SCENE_ATTRS]]).to(dev)
    n_scene = 16 if len(photos) and scenes else (32 if scenes else 0)
    vae.eval()
    with torch.no_grad():
        photo_latents = torch.cat([vae.encode(photos[i : i + 256]).latent_dist.mean
                                   for i in range(0, len(photos), 256)]) if len(photos) else None
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    vae.decoder.train()  # the encoder stays in eval mode
    for step in tqdm(range(steps), desc="decoder", disable=not progress, mininterval=5):
        xs, zs = [], []
        if n_scene:
            renders = np.stack([render_scene(_SCENE_ATTRS[scenes[i]], rng)
                                for i in rng.integers(0, len(scenes), n_scene)])
            x = images_to_tensor(renders).to(dev)
            with torch.no_grad():
                zs.append(vae.encode(x).latent_dist.mean)
            xs.append(x)
        if 32 - n_scene:
            idx = torch.randint(0, len(photos), (32 - n_scene,), generator=gen).to(dev)
            zs.append(photo_latents[idx])
            xs.append(photos[idx])
        x, z = torch.cat(xs), torch.cat(zs)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
        if step % 250 == 0:
            log.info("decoder step %d loss %.4f", step, loss.item())
    vae.eval().requires_grad_(False)


def finetune_decoder_of(model_dir: Path, manifest: Path, out_dir: Path, steps: int, lr: float = 5e-4,
                        seed: int = 0, progress: bool = True) -> Path:
    """`finetune_decoder` applied to a saved testbed pipeline; the result is saved atomically to `out_dir`."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, use_safetensors=True)
    images_np, captions = load_training_arrays(manifest)
    finetune_decoder(pipe.vae, images_np, captions, steps, lr, seed, progress)
    info_path = Path(model_dir) / "memprune_train.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["decoder_finetune"] = {"steps": steps, "lr": lr, "seed": seed}
    info.setdefault("dataset_sha256", dataset_digest(Path(manifest).parent))
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "memprune_train.json").write_text(json.dumps(info, indent=2) + "\n")
    return Path(out_dir)


_SCENE_ATTRS = {scene_caption(a): a for a in scene_combinations()}


def save_untrained_pipeline(out_dir: Path, bpe_path: Path, spec: ModelSpec | None = None, seed: int = 0,
                            prediction_type: str = "epsilon") -> Path:
    """A randomly initialised testbed-structured pipeline (for tests and dry runs), saved atomically."""
    import torch

    spec = spec or ModelSpec()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(bpe_path, spec.max_length)
    vae = build_vae(spec)
    latent = RESOLUTION // 2 ** (len(spec.vae_channels) - 1)
    pipe = assemble_pipeline(vae, build_unet(spec, latent), build_text_encoder(spec, tokenizer), tokenizer)
    pipe.scheduler.register_to_config(prediction_type=prediction_type)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)
