"""What the measurement tools (benchmarks/) and studies (experiments/) share: argument parsing, JSON lines, the
default config, a testbed's prompt groups, and the generate -> SSIM -> copy-rate loop.

Run a tool from the repository root, e.g. `python -m benchmarks.capture_overhead --help`; memprune itself is
imported as installed (`pip install -e .`), so no tool edits `sys.path`. Heavy imports (torch, diffusers) happen
inside the functions that need them, so `--help` is fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository (workflow/memprune/bench.py)


def int_list(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2] (a `--seeds` argument); empty items are skipped."""
    return [int(s) for s in text.split(",") if s.strip()]


def emit(**values) -> dict:
    """Print one JSON line (flushed, so a long run shows its progress) and return it."""
    print(json.dumps(values), flush=True)
    return values


def default_config(path: str | Path = ROOT / "config.yaml") -> dict:
    """A config file as the workflow reads it: checked against the schema, every default filled in (so a section
    that the file leaves to the defaults, e.g. `mitigation.wen`, is there)."""
    import yaml

    from memprune.plan.schema import validate_config

    return validate_config(yaml.safe_load(Path(path).read_text()) or {})


def cpu_pipeline(model: str | Path, threads: int | None = None):
    """The model's pipeline on the CPU in float32, with `threads` torch threads (None: torch's default)."""
    import torch

    from memprune.models import load_pipeline

    if threads:
        torch.set_num_threads(threads)
    return load_pipeline(model, "cpu", "float32")


def prompt_major(prompts: list[str], seeds: list[int]) -> tuple[list[str], list[int]]:
    """Every prompt with every seed, prompt-major: (P * S prompts, P * S seeds)."""
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


def sample(pipe, prompts: list[str], seeds: list[int], cfg, prompt_embeds=None) -> np.ndarray:
    """Images (P * S, H, W, 3) uint8 of every prompt with every seed, prompt-major (`prompt_major`).
    `prompt_embeds` ((P * S, L, D), optional) replace the prompts' text embeddings."""
    from memprune.sampling import generate

    flat_prompts, flat_seeds = prompt_major(prompts, seeds)
    return generate(pipe, flat_prompts, flat_seeds, cfg, prompt_embeds=prompt_embeds)


@dataclass
class Copies:
    """How often a model copies: `ssim` (prompt, seed) to each prompt's own photo; a prompt copies when SSIM >=
    the threshold in most of its seeds (memprune.evaluate.metrics.copy_rate); `images` (P * S, H, W, 3)."""

    rate: float
    mean_ssim: float
    ssim: np.ndarray
    images: np.ndarray

    def summary(self) -> dict:
        return {"copy_rate": round(self.rate, 3), "mean_ssim": round(self.mean_ssim, 3)}


def copies(pipe, prompts: list[str], own: np.ndarray, seeds: list[int], cfg, threshold: float,
           prompt_embeds=None) -> Copies:
    """Generate every prompt with every seed, SSIM of each image to its prompt's own photo (`own`: (P, H, W, 3),
    in the order of `prompts`), and the copy rate."""
    from memprune.evaluate.metrics import copy_rate
    from memprune.testbed.report import own_photo_ssim

    if len(own) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(own)} own photos")
    images = sample(pipe, prompts, seeds, cfg, prompt_embeds=prompt_embeds)
    ssim = own_photo_ssim(images, own)
    return Copies(float(copy_rate(ssim, threshold)), float(ssim.mean()), ssim, images)


def follows(pipe, scene_rows: list[dict], seeds: list[int], cfg) -> float:
    """Prompt following on a testbed's scene rows (manifest rows with attributes): the share of images, every
    row with every seed, whose four attributes all read back."""
    from memprune.testbed.scenes import prompt_following

    images = sample(pipe, [r["caption"] for r in scene_rows], seeds, cfg)
    return float(prompt_following(images, [r for r in scene_rows for _ in seeds]).mean())


@dataclass
class TestbedGroups:
    """A testbed's manifest rows by group: the duplicated prompts with their own photos (P, H, W, 3), the
    single-seen ones, and the held-out scene prompts (prompt following)."""

    rows: list[dict]
    duplicated: list[dict]
    duplicated_photos: np.ndarray
    single: list[dict]
    heldout: list[dict]


def testbed_groups(model: str | Path, data: str | Path) -> TestbedGroups:
    """The manifest of the dataset `data` as the ground truth of `model` (refused when the testbed was trained on
    another dataset: memprune.testbed.dataset.read_checked_manifest)."""
    from memprune.testbed.dataset import load_images, read_checked_manifest

    rows = read_checked_manifest(Path(model), Path(data))
    dup = [r for r in rows if r["group"] == "duplicated"]
    return TestbedGroups(rows, dup, load_images(Path(data), dup), [r for r in rows if r["group"] == "single"],
                         [r for r in rows if r["group"] == "generalization" and r["split"] == "heldout"])
