"""A tiny open_clip model for the testbed: CLIP score and Frechet features at 32x32 (`memprune train-clip`).

Stable Diffusion is evaluated with a real CLIP (ViT-H-14 / ViT-g-14); the testbed's photos with invented
captions and its synthetic scenes mean nothing to those, so the testbed ships its own CLIP trained on the
testbed's training split, loaded through open_clip's own `local-dir:` path (a folder holding
`open_clip_config.json` and `open_clip_model.safetensors`), so that the evaluation runs the same code for
both. The text tower uses CLIP's real tokenizer and vocabulary (open_clip's `SimpleTokenizer`).

Training: symmetric InfoNCE on batches of DISTINCT captions (a duplicated photo appears once per batch, so
it is never its own negative), one random training image per caption, with light augmentation (1-pixel
shifts, blur, noise, brightness) so that imperfect generations still score by content. The held-out scene
combinations are never seen: their retrieval accuracy measures how compositional the text tower is.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from memprune.formats.store import atomic_dir
from memprune.testbed.dataset import dataset_digest, images_to_tensor, read_manifest

log = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
RECORD_NAME = "memprune_clip.json"


@dataclass
class ClipSpec:
    seed: int = 0
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 200
    embed_dim: int = 64
    vision_width: int = 96
    vision_layers: int = 3
    patch_size: int = 8  # 4x4 patches of 8x8 pixels: 4x cheaper than 4-pixel patches, scenes still read
    text_width: int = 64
    text_layers: int = 3
    context_length: int = 24  # the longest testbed caption is 13 tokens with start/end
    threads: int = 1  # torch threads; 0: torch's default. One thread measured 25x faster than two on 2 busy cores


def model_config(spec: ClipSpec, image_size: int = 32) -> dict:
    """open_clip's `open_clip_config.json` content: the model and its preprocessing (images in [-1, 1])."""
    return {
        "model_cfg": {
            "embed_dim": spec.embed_dim,
            "vision_cfg": {"image_size": image_size, "layers": spec.vision_layers, "width": spec.vision_width,
                           "head_width": 32, "mlp_ratio": 2.0, "patch_size": spec.patch_size},
            "text_cfg": {"context_length": spec.context_length, "vocab_size": 49408, "width": spec.text_width,
                         "heads": 4, "layers": spec.text_layers, "mlp_ratio": 2.0},
        },
        "preprocess_cfg": {"size": image_size, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }


def _augment(x, gen):
    """x: (B, 3, H, W) in [-1, 1]. Shifts of up to one pixel, blur, noise, brightness; all from `gen`."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    shifts = torch.randint(-1, 2, (b, 2), generator=gen)
    x = torch.stack([torch.roll(img, (int(s[0]), int(s[1])), dims=(1, 2)) for img, s in zip(x, shifts)])
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        x = torch.where(blur[:, None, None, None], blurred, x)
    x = x + torch.randn(x.shape, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) * 0.08)
    x = x * (1 + (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.2)
    return x.clamp(-1, 1)


def _images_by_caption(data_dir: Path, split: str) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    out: dict[str, list[np.ndarray]] = {}
    for row in read_manifest(data_dir / "manifest.jsonl"):
        if row.get("split", "train") == split:
            img = np.asarray(Image.open(data_dir / row["image"]).convert("RGB"))
            out.setdefault(row["caption"], []).append(img)
    return out


def train_clip(data_dir: Path, out_dir: Path, spec: ClipSpec, progress: bool = True) -> dict:
    """Train on the dataset's training split; write config, fp16 safetensors weights and a record (atomically)."""
    import open_clip
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    data_dir = Path(data_dir)
    train = _images_by_caption(data_dir, "train")
    captions = sorted(train)
    cfg = model_config(spec)
    model = open_clip.model.CLIP(**cfg["model_cfg"])
    tokenizer = open_clip.tokenize
    tokens = tokenizer(captions, context_length=spec.context_length)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / spec.warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / spec.steps))))
    batch = min(spec.batch_size, len(captions))
    start = time.time()
    ema = None
    model.train()
    for step in tqdm(range(spec.steps), desc="train-clip", disable=not progress):
        idx = rng.choice(len(captions), size=batch, replace=False)
        imgs = np.stack([train[captions[i]][rng.integers(len(train[captions[i]]))] for i in idx])
        x = _augment(images_to_tensor(imgs), gen)
        img_f, txt_f, scale = model(x, tokens[idx])
        logits = scale * img_f @ txt_f.T
        target = torch.arange(batch)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 500 == 0 or step == spec.steps - 1:
            log.info("step %d loss %.4f (ema %.4f)", step, loss.item(), ema)
    seconds = time.time() - start
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS_NAME))
        # Measured on the files as shipped (fp16 weights through open_clip's loader).
        accuracy = retrieval_accuracy(tmp, data_dir)
        record = {
            "train": asdict(spec), "seconds": round(seconds, 1), "final_ema_loss": ema,
            "dataset_sha256": dataset_digest(data_dir), "train_captions": len(captions),
            "open_clip_version": open_clip.__version__, "torch_version": torch.__version__,
            "retrieval": accuracy,
        }
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    log.info("trained in %.0f s; retrieval %s", seconds, accuracy)
    return record


def retrieval_accuracy(clip_dir: Path, data_dir: Path) -> dict:
    """Top-1 image->caption retrieval of the model in `clip_dir`:
    * heldout_among_heldout: each held-out scene render against the 54-ish held-out scene captions;
    * heldout_among_scenes: the same against all scene captions (held out or not);
    * train_photos: each training photo against all photo captions; train_scenes: first render of each
      training scene against all scene captions."""
    from memprune.evaluate.metrics import ClipScorer

    rows = read_manifest(Path(data_dir) / "manifest.jsonl")
    scorer = ClipScorer.load(f"local-dir:{clip_dir}", device="cpu")
    held = _images_by_caption(Path(data_dir), "heldout")
    train = _images_by_caption(Path(data_dir), "train")
    scene_caps = sorted({r["caption"] for r in rows if r["group"] == "generalization"})
    photo_caps = sorted({r["caption"] for r in rows if r["group"] in ("duplicated", "single")})

    def top1(images_of: dict, captions: list[str], candidates: list[str]) -> float:
        images = np.stack([images_of[c][0] for c in captions])
        img = scorer.image_features(images)
        txt = scorer.text_features(candidates)
        pred = (img @ txt.T).argmax(1)
        return float(np.mean([candidates[p] == c for p, c in zip(pred, captions)]))

    held_caps = sorted(held)
    train_scenes = [c for c in scene_caps if c in train]
    return {
        "heldout_among_heldout": top1(held, held_caps, held_caps),
        "heldout_among_scenes": top1(held, held_caps, scene_caps),
        "train_scenes": top1(train, train_scenes, scene_caps),
        "train_photos": top1(train, [c for c in photo_caps if c in train], photo_caps),
        "n_heldout": len(held_caps), "n_scene_captions": len(scene_caps), "n_photo_captions": len(photo_caps),
    }


def save_untrained_clip(out_dir: Path, spec: ClipSpec | None = None, image_size: int = 32, seed: int = 0) -> Path:
    """A randomly initialised model in open_clip's local-dir layout (tests, and the shape of a trained one)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    spec = spec or ClipSpec()
    cfg = model_config(spec, image_size)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg["model_cfg"])
    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_NAME))
    return Path(out_dir)
