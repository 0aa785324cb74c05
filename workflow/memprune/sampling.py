"""Generation: batched, seeded, classifier-free guidance; images as uint8 arrays and PNG files with an index."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from memprune.formats.store import atomic_dir


@dataclass(frozen=True)
class SamplingConfig:
    steps: int = 50  # the schema's defaults (workflow/schemas/config.schema.yaml; tests/test_defaults.py)
    guidance: float = 7.5
    batch_size: int = 8
    height: int | None = None  # None: the model's default resolution
    width: int | None = None
    compile: str | bool = "auto"  # torch.compile the UNet: auto = on CUDA only (models.compile_unet)


def generate(pipe, prompts: list[str], seeds: list[int], cfg: SamplingConfig, progress: bool = False,
             prompt_embeds=None) -> np.ndarray:
    """Images (len(prompts), H, W, 3) uint8; image i uses prompt i and a generator seeded with seeds[i].

    One generator per image makes every image independent of how the batch was cut.
    `prompt_embeds` (optional, (N, L, D)) replaces the prompts' text embeddings (inference-time mitigation).
    """
    import torch
    from tqdm.auto import tqdm

    from memprune.models import compile_unet

    assert len(prompts) == len(seeds)
    compile_unet(pipe.unet, cfg.compile)
    out = []
    starts = range(0, len(prompts), cfg.batch_size)
    for start in tqdm(starts, desc="sample", disable=not progress):
        sl = slice(start, start + cfg.batch_size)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[sl]]
        kwargs = dict(
            num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, generator=gens, output_type="np",
            height=cfg.height, width=cfg.width,
        )
        if prompt_embeds is not None:
            kwargs["prompt_embeds"] = prompt_embeds[sl]
        else:
            kwargs["prompt"] = prompts[sl]
        # Latents are drawn on the CPU from the per-image generators, then moved: seeds give the same
        # starting noise on every device.
        kwargs["latents"] = _initial_latents(pipe, gens, cfg)
        with torch.inference_mode():
            images = pipe(**kwargs).images
        out.append((np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def text_embeddings(pipe, prompts: list[str], batch: int = 64):
    """(N, L, D) the text encoder's outputs for `prompts` (no guidance branch), in batches, without gradients."""
    import torch

    with torch.no_grad():
        return torch.cat([pipe.encode_prompt(prompts[i : i + batch], pipe.unet.device, 1, False)[0]
                          for i in range(0, len(prompts), batch)])


def image_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels of what a stage generates or probes: the configured size (config `sampling`), else
    (None) the model's default resolution, the UNet's sample size times the VAE's scale factor."""
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return height or default, width or default


def latent_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(h, w) of the latents of images of `image_size(pipe, height, width)`."""
    return tuple(side // pipe.vae_scale_factor for side in image_size(pipe, height, width))


def _initial_latents(pipe, gens, cfg: SamplingConfig):
    import torch

    unet = pipe.unet
    h, w = latent_size(pipe, cfg.height, cfg.width)
    shape = (unet.config.in_channels, h, w)
    lat = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
    return lat.to(device=unet.device, dtype=unet.dtype)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_samples(out_dir: Path, prompts: list[str], seeds: list[int], images: np.ndarray,
                  extra: Iterable[dict] | None = None) -> Path:
    """PNG per image plus `index.csv` (file, prompt, seed, ...), written atomically as one directory."""
    extra = list(extra) if extra is not None else [{} for _ in prompts]
    with atomic_dir(out_dir) as tmp:
        rows = []
        for i, (prompt, seed, img, ex) in enumerate(zip(prompts, seeds, images, extra)):
            name = f"{i:05d}_s{seed}.png"
            (tmp / name).write_bytes(png_bytes(img))
            rows.append({"file": name, "prompt": prompt, "seed": seed, **ex})
        with open(tmp / "index.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["file", "prompt", "seed"])
            writer.writeheader()
            writer.writerows(rows)
    return out_dir / "index.csv"


