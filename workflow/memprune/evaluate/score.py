"""`eval-score`: per (prompt, seed) of one samples directory, the copy similarity to the prompt's training images
(memorized prompts), the CLIP score, prompt following (testbed scenes) and the Frechet features; netCDF."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memprune.errors import InputError
from memprune.evaluate.training_images import TrainingImages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricOptions:
    """Where the metrics' models are: SSCD (None: SSIM), CLIP (an open_clip name with weights, or a local-dir
    folder), Inception (None: the CLIP image tower gives the Frechet features), and the device."""

    sscd: str | None = None
    clip_name: str | None = None
    clip_weights: str | None = None
    inception: str | None = None
    device: str = "auto"

    def resolved_device(self) -> str:
        from memprune.models import resolve_device

        return resolve_device(self.device)

    def features(self):
        """(CLIP scorer, Frechet featurizer, its name): Inception when configured, else the CLIP image tower."""
        from memprune.evaluate.metrics import ClipScorer, InceptionFeatures

        clip = ClipScorer.load(self.clip_name, self.clip_weights, device=self.resolved_device())
        if self.inception:
            return clip, InceptionFeatures(self.inception, self.resolved_device()), "inception_pool3"
        return clip, clip.image_embeddings, "clip_image_embedding"


class Samples:
    """A samples directory from `eval-sample`: prompts, seeds, groups and timing; images loaded on demand."""

    def __init__(self, path: str | Path):
        path = Path(path)
        with open(path / "index.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        self.path = path
        self.prompts = list(dict.fromkeys(r["prompt"] for r in rows))
        self.seeds = list(dict.fromkeys(int(r["seed"]) for r in rows))
        group = {r["prompt"]: r["group"] for r in rows}
        self.groups = [group[p] for p in self.prompts]
        if len(rows) != len(self.prompts) * len(self.seeds):
            raise InputError(f"{path}/index.csv: {len(rows)} rows, expected prompts x seeds = "
                             f"{len(self.prompts)} x {len(self.seeds)}")
        self.files = np.array([r["file"] for r in rows], dtype=object).reshape(len(self.prompts), len(self.seeds))
        self.timing = json.loads((path / "timing.json").read_text())

    def images(self, prompt_indices) -> np.ndarray:
        """(len(prompt_indices), seed, H, W, 3) uint8."""
        from PIL import Image

        return np.stack([[np.asarray(Image.open(self.path / f).convert("RGB")) for f in self.files[i]]
                         for i in prompt_indices])


def score_variant(samples: str | Path, out: str | Path, metrics: MetricOptions, memorized: str | Path | None = None,
                  data: str | Path | None = None, ground_truth: str | Path | None = None) -> None:
    """Per (prompt, seed) of `samples`: copy similarity (memorized prompts; ground truth from the testbed
    dataset `data` or the `<ground_truth>/<index>/*.png` layout indexed by `memorized`), CLIP score, prompt
    following, features."""
    import xarray as xr

    from memprune import __version__
    from memprune.evaluate.metrics import CopySimilarity
    from memprune.formats.store import write_netcdf
    from memprune.testbed.dataset import check_trained_on
    from memprune.testbed.scenes import attribute_matches

    s = Samples(samples)
    prompts, seeds, groups, timing = s.prompts, s.seeds, s.groups, s.timing
    n_p, n_s = len(prompts), len(seeds)
    gt = TrainingImages(data, ground_truth, memorized)
    if data and metrics.clip_weights:  # a testbed CLIP scores only the captions it was trained on
        check_trained_on(Path(metrics.clip_weights), Path(data), "memprune_clip.json")
    copier = CopySimilarity(metrics.sscd, metrics.resolved_device())
    clip, featurize, feature_space = metrics.features()
    copy_sim = np.full((n_p, n_s), np.nan)
    follows = np.full((n_p, n_s), np.nan)
    clip_scores = np.full((n_p, n_s), np.nan)
    feats = None
    step = max(1, 256 // n_s)  # prompts per chunk: memory stays bounded for SD's 512 px images
    for start in range(0, n_p, step):
        idx = list(range(start, min(start + step, n_p)))
        images = s.images(idx)
        for k, i in enumerate(idx):
            p, g = prompts[i], groups[i]
            if g == "memorized":
                copy_sim[i] = copier.similarity(images[k], gt.images(p)).max(axis=1)
            elif p in gt.attributes:
                follows[i] = attribute_matches(images[k], [gt.attributes[p]] * n_s).all(axis=1)
        flat = images.reshape(len(idx) * n_s, *images.shape[2:])
        clip_scores[idx] = clip.score(flat, [prompts[i] for i in idx for _ in seeds]).reshape(len(idx), n_s)
        f = featurize(flat).reshape(len(idx), n_s, -1)
        if feats is None:
            feats = np.zeros((n_p, n_s, f.shape[-1]), np.float32)
        feats[idx] = f
    ds = xr.Dataset(
        {
            "copy_similarity": (("prompt", "seed"), copy_sim,
                                {"long_name": f"{copier.name} to the prompt's training images (max over them)"}),
            "clip_score": (("prompt", "seed"), clip_scores, {"long_name": "100 * max(cos(image, prompt), 0)"}),
            "follows_prompt": (("prompt", "seed"), follows,
                               {"long_name": "all 4 scene attributes read back (testbed scenes; NaN elsewhere)"}),
            "features": (("prompt", "seed", "feature"), feats,
                         {"long_name": f"Frechet features ({feature_space})"}),
        },
        coords={"prompt": np.array(prompts, dtype=object), "seed": seeds,
                "group": ("prompt", np.array(groups, dtype=object))},
        attrs={"samples": str(samples), "copy_metric": copier.name, "feature_space": feature_space,
               "copy_checkpoint": Path(metrics.sscd).name.split(".")[0] if metrics.sscd else "",
               "clip_model": str(metrics.clip_name or metrics.clip_weights), "memprune_version": __version__,
               **{f"timing_{k}": v for k, v in timing.items() if isinstance(v, (int, float, str))}},
    )
    write_netcdf(ds, out)
    mem = np.array(groups) == "memorized"
    log.info("%s: mean copy similarity %.3f, CLIP score %.2f", samples,
             np.nanmean(copy_sim[mem]) if mem.any() else np.nan,
             float(clip_scores.mean()))
