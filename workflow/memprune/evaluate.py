"""Evaluation of pruned models against the unedited model and Wen et al.'s mitigation (the paper's section 5.2,
Figures 3 and 4). Three steps, one Snakemake job each:

* `eval-sample` (one job per variant): generate every test prompt x seed with one model variant -- `none`
  (the unedited model), `pruned` (one pruned checkpoint) or `wen` (inference-time mitigation) -- and record
  the wall-clock (and CPU) time of the generation, Wen's embedding optimisation included;
* `eval-score` (one job per variant): per (prompt, seed) the copy similarity to the prompt's ground-truth
  images (SSCD or SSIM, the max over its images), the CLIP score, prompt following (testbed scenes) and the
  Frechet features;
* `eval-aggregate`: the fair split (a pruned model is tested on the memorized prompts NOT in the subset its
  mask came from; the baselines on the same prompts, so every comparison is on one test set), copy rates,
  Frechet distances, time on the test set (plus, for pruned models, the measured cost of their masks), the
  `eval.nc` dataset, a summary table and the figures.

Prompts: the memorized prompt set (its first `max_memorized`), then the non-memorized prompts (generalization:
the testbed's held-out scene captions, COCO captions for SD). Ground truth: the testbed dataset's manifest
(caption -> images), or a directory `<root>/<index>/*.png` where <index> is the prompt's 0-based position in
the memorized prompt file.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from .prompts import InputError, read_prompts

log = logging.getLogger(__name__)

VARIANTS = ("none", "pruned", "wen")
GROUPS = ("memorized", "nonmemorized")


# ---------------------------------------------------------------------------------------------- prompts


def eval_prompts(memorized: str | Path, max_memorized: int | None, nonmemorized: str | Path | None,
                 max_nonmemorized: int | None) -> tuple[list[str], list[str]]:
    mem = read_prompts(Path(memorized))[:max_memorized]
    non = read_prompts(Path(nonmemorized))[:max_nonmemorized] if nonmemorized else []
    both = set(mem) & set(non)
    if both:
        raise InputError(f"prompt {sorted(both)[0]!r} is both in {memorized} (memorized) and {nonmemorized}")
    return mem, non


def fair_split(prompts: list[str], subset_prompts: dict[str, list[str]]) -> np.ndarray:
    """(subset, prompt) bool: prompt p is in subset s's test set, i.e. not one of the prompts whose
    activations gave s's mask (the paper: "we remove all the prompts in S_i from M to form the test sets")."""
    return np.array([[p not in set(sp) for p in prompts] for sp in subset_prompts.values()], dtype=bool).reshape(
        len(subset_prompts), len(prompts))


def subset_prompts_from_json(spec: dict) -> dict[str, list[str]]:
    """{label: {"file": prompt file, "indices": [...]}} -> {label: prompts}."""
    cache: dict[str, list[str]] = {}
    out = {}
    for label, s in spec.items():
        if s["file"] not in cache:
            cache[s["file"]] = read_prompts(Path(s["file"]))
        out[label] = [cache[s["file"]][i] for i in s["indices"]]
    return out


# ---------------------------------------------------------------------------------------------- ground truth


class GroundTruth:
    """Training images of memorized prompts, and scene attributes of testbed prompts.

    `data`: the testbed dataset directory (manifest.jsonl: caption -> its images and, for scenes, attributes);
    or `root`: a directory `<root>/<index>/*.png`, index = the prompt's 0-based line in `memorized_file`."""

    def __init__(self, data: str | Path | None = None, root: str | Path | None = None,
                 memorized_file: str | Path | None = None):
        self.data = Path(data) if data else None
        self.root = Path(root) if root else None
        self.by_caption: dict[str, list[str]] = {}
        self.attributes: dict[str, dict] = {}
        if self.data is not None:
            from .metrics import SCENE_ATTRIBUTES
            from .testbed import read_manifest

            for row in read_manifest(self.data / "manifest.jsonl"):
                self.by_caption.setdefault(row["caption"], []).append(row["image"])
                if all(k in row for k in SCENE_ATTRIBUTES):
                    self.attributes[row["caption"]] = {k: row[k] for k in SCENE_ATTRIBUTES}
        self.index = {p: i for i, p in enumerate(read_prompts(Path(memorized_file)))} if memorized_file else {}
        if self.data is None and self.root is None:
            raise InputError("evaluate: no ground truth: give the testbed dataset or evaluate.ground_truth (a directory)")

    def images(self, prompt: str) -> np.ndarray:
        """(R, H, W, 3) uint8: the training images of `prompt`."""
        from PIL import Image

        if self.root is not None:
            if prompt not in self.index:
                raise InputError(f"ground truth: prompt {prompt[:60]!r} is not in the memorized prompt file")
            folder = self.root / str(self.index[prompt])
            files = sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg"))
            if not files:
                raise InputError(
                    f"ground truth: no image for memorized prompt {self.index[prompt]} ({prompt[:60]!r}): expected "
                    f"{folder}/*.png (layout <root>/<index>/*.png, index = 0-based line of the memorized prompt file)")
        else:
            if prompt not in self.by_caption:
                raise InputError(f"ground truth: prompt {prompt[:60]!r} is not in {self.data}/manifest.jsonl")
            files = [self.data / f for f in self.by_caption[prompt]]
        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


# ---------------------------------------------------------------------------------------------- sampling


def _seeds(text: str) -> list[int]:
    return [int(s) for s in str(text).split(",") if s.strip()]


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def sample_variant(args) -> None:
    """Generate every (prompt, seed) of the test set with one variant; PNGs, index.csv and timing.json."""
    import torch
    from tqdm.auto import tqdm

    from .models import load_pipeline
    from .sampling import SamplingConfig, generate, png_bytes
    from .store import atomic_dir

    mem, non = eval_prompts(args.memorized, args.max_memorized, args.nonmemorized, args.max_nonmemorized)
    seeds = _seeds(args.seeds)
    prompts = mem + non
    groups = ["memorized"] * len(mem) + ["nonmemorized"] * len(non)
    flat_p = [p for p in prompts for _ in seeds]
    flat_s = [s for _ in prompts for s in seeds]
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=args.batch_size,
                         height=args.height, width=args.width)
    if args.variant == "pruned":
        from .prune import load_pruned_pipeline

        if not args.checkpoint:
            raise InputError("eval-sample --variant pruned needs --checkpoint")
        pipe = load_pruned_pipeline(args.checkpoint, base=args.model, device=args.device, dtype=args.dtype,
                                    scheduler=args.scheduler)
    else:
        pipe = load_pipeline(args.model, args.device, args.dtype, args.scheduler)
    device = str(pipe.unet.device)
    generate(pipe, flat_p[:1], flat_s[:1], cfg)  # warm-up (lazy initialisation), not timed
    # Chunks of images bound the memory (SD: thousands of 512 px images); only generation is timed, not PNG
    # encoding. Chunks are whole batches, so batching is the same as in one call.
    chunk = cfg.batch_size * max(1, 256 // cfg.batch_size)
    seconds = cpu_seconds = wen_seconds = 0.0
    wen_infos = []
    with atomic_dir(Path(args.out)) as tmp:
        rows = []
        for start in tqdm(range(0, len(flat_p), chunk), desc=f"eval-sample {args.variant}"):
            ps, ss = flat_p[start : start + chunk], flat_s[start : start + chunk]
            _sync(device)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            if args.variant == "wen":
                from .sampling import wen_mitigated_embeddings

                embeds, info = wen_mitigated_embeddings(pipe, ps, ss, cfg, lr=args.wen_lr, max_iters=args.wen_max_iters,
                                                        target_loss=args.wen_target_loss)
                _sync(device)
                wen_seconds += time.perf_counter() - wall0
                wen_infos.append(info)
                images = generate(pipe, ps, ss, cfg, prompt_embeds=embeds)
            else:
                images = generate(pipe, ps, ss, cfg)
            _sync(device)
            seconds += time.perf_counter() - wall0
            cpu_seconds += time.process_time() - cpu0
            for i, (p, s, img) in enumerate(zip(ps, ss, images), start):
                name = f"{i:05d}_s{s}.png"
                (tmp / name).write_bytes(png_bytes(img))
                rows.append({"file": name, "prompt": p, "seed": s, "group": groups[i // len(seeds)]})
        extra: dict = {}
        if wen_infos:
            cat = {k: np.concatenate([np.asarray(w[k]) for w in wen_infos]) for k in
                   ("iterations", "converged", "initial_loss", "final_loss")}
            extra = {"wen_seconds": wen_seconds, "wen_lr": args.wen_lr, "wen_max_iters": args.wen_max_iters,
                     "wen_target_loss": args.wen_target_loss,
                     "wen_mean_iterations": float(np.mean(cat["iterations"])),
                     "wen_converged_fraction": float(np.mean(cat["converged"])),
                     "wen_mean_initial_loss": float(np.nanmean(cat["initial_loss"])),
                     "wen_mean_final_loss": float(np.nanmean(cat["final_loss"]))}
        n = max(len(flat_p), 1)
        timing = {"variant": args.variant, "checkpoint": str(args.checkpoint or ""), "model": str(args.model),
                  "seconds": seconds, "cpu_seconds": cpu_seconds, "n_images": len(flat_p),
                  "seconds_per_image": seconds / n, "cpu_seconds_per_image": cpu_seconds / n,
                  "device": device, "torch_threads": torch.get_num_threads(), "steps": args.steps,
                  "guidance": args.guidance, "batch_size": args.batch_size,
                  "timed": "generation of every test image (model loading, a one-image warm-up and PNG writing "
                           "excluded; Wen's embedding optimisation included)", **extra}
        log.info("%s: %d images in %.1f s (%.3f s/image)", args.variant, len(flat_p), seconds, timing["seconds_per_image"])
        with open(tmp / "index.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "prompt", "seed", "group"])
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")


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


# ---------------------------------------------------------------------------------------------- scoring


def _features(args):
    """The Frechet feature extractor: Inception when configured, else the CLIP image tower."""
    from .metrics import ClipScorer, InceptionFeatures

    clip = ClipScorer.load(args.clip_name, args.clip_weights, device=_device(args.device))
    if args.inception:
        return clip, InceptionFeatures(args.inception, _device(args.device)), "inception_pool3"
    return clip, clip.image_embeddings, "clip_image_embedding"


def _device(device: str) -> str:
    from .models import resolve_device

    return resolve_device(device)


def score_variant(args) -> None:
    """Per (prompt, seed): copy similarity (memorized prompts), CLIP score, prompt following, features."""
    import xarray as xr

    from . import __version__
    from .metrics import CopySimilarity, attribute_matches
    from .store import write_netcdf
    from .testbed import check_trained_on

    samples = Samples(args.samples)
    prompts, seeds, groups, timing = samples.prompts, samples.seeds, samples.groups, samples.timing
    n_p, n_s = len(prompts), len(seeds)
    gt = GroundTruth(args.data, args.ground_truth, args.memorized)
    if args.data and args.clip_weights:  # a testbed CLIP scores only the captions it was trained on
        check_trained_on(Path(args.clip_weights), Path(args.data), "memprune_clip.json")
    copier = CopySimilarity(args.sscd, _device(args.device))
    clip, featurize, feature_space = _features(args)
    copy_sim = np.full((n_p, n_s), np.nan)
    follows = np.full((n_p, n_s), np.nan)
    clip_scores = np.full((n_p, n_s), np.nan)
    feats = None
    step = max(1, 256 // n_s)  # prompts per chunk: memory stays bounded for SD's 512 px images
    for start in range(0, n_p, step):
        idx = list(range(start, min(start + step, n_p)))
        images = samples.images(idx)
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
            "copy_similarity": (("prompt", "seed"), copy_sim, {"long_name": f"{copier.name} to the prompt's training images (max over them)"}),
            "clip_score": (("prompt", "seed"), clip_scores, {"long_name": "100 * max(cos(image, prompt), 0)"}),
            "follows_prompt": (("prompt", "seed"), follows, {"long_name": "all 4 scene attributes read back (testbed scenes; NaN elsewhere)"}),
            "features": (("prompt", "seed", "feature"), feats,
                         {"long_name": f"Frechet features ({feature_space})"}),
        },
        coords={"prompt": np.array(prompts, dtype=object), "seed": seeds, "group": ("prompt", np.array(groups, dtype=object))},
        attrs={"samples": str(args.samples), "copy_metric": copier.name, "feature_space": feature_space,
               "clip_model": str(args.clip_name or args.clip_weights), "memprune_version": __version__,
               **{f"timing_{k}": v for k, v in timing.items() if isinstance(v, (int, float, str))}},
    )
    write_netcdf(ds, args.out)
    mem = np.array(groups) == "memorized"
    log.info("%s: mean copy similarity %.3f, CLIP score %.2f", args.samples, np.nanmean(copy_sim[mem]) if mem.any() else np.nan,
             float(clip_scores.mean()))


# ---------------------------------------------------------------------------------------------- aggregation


def benchmark_seconds(parts: list) -> tuple[float, list[str]]:
    """Sum of share * s over Snakemake benchmark files [(tsv, share), ...]; and the files not found."""
    total, missing = 0.0, []
    for path, share in parts:
        path = Path(path)
        if not path.exists():
            missing.append(str(path))
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            total += share * float(np.mean([float(r["s"]) for r in rows]))
    return total, missing


def copy_rate(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """(..., prompt, seed) -> (...) the fraction of prompts (NaN prompts skipped) that copy: most seeds at or
    above the threshold (as `report.copy_rate`)."""
    from .metrics import copied_in_most_seeds

    valid = ~np.isnan(similarity).all(axis=-1)
    copied = copied_in_most_seeds(similarity, threshold)
    n = valid.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (copied & valid).sum(axis=-1) / n, np.nan)


def reference_features(args, prompts: list[str], seeds: list[int], featurize) -> tuple[np.ndarray | None, str]:
    """Frechet reference of the non-memorized prompts: `renders` (testbed: each held-out scene rendered once
    per seed, the first render canonical and the others with the dataset's jitter), `images` (real images
    `<root>/<index>/*.png`, index = the prompt's position in the non-memorized file) or `unedited` (None:
    the unedited model's generations are the reference)."""
    if args.fid_reference == "unedited" or not prompts:
        return None, "the unedited model's generations of the same prompts and seeds"
    if args.fid_reference == "renders":
        from .testbed import render_scene

        gt = GroundTruth(args.data, None, None)
        images = []
        for pi, p in enumerate(prompts):
            if p not in gt.attributes:
                raise InputError(f"fid_reference renders: {p[:60]!r} is not a testbed scene caption")
            for si, seed in enumerate(seeds):
                rng = None if si == 0 else np.random.default_rng([seed, pi])
                images.append(render_scene(gt.attributes[p], rng))
        return featurize(np.stack(images)), "renders of the requested scenes (testbed.render_scene, one per seed)"
    from PIL import Image

    root = Path(args.reference_images or "")
    index = {p: i for i, p in enumerate(read_prompts(Path(args.nonmemorized)))}
    images = []
    for p in prompts:
        files = sorted((root / str(index[p])).glob("*.png")) + sorted((root / str(index[p])).glob("*.jpg"))
        if not files:
            raise InputError(f"fid_reference images: no image {root}/{index[p]}/*.png for {p[:60]!r}")
        images += [np.asarray(Image.open(f).convert("RGB").resize((512, 512))) for f in files]
    return featurize(np.stack(images)), f"real images under {root}"


def aggregate(args) -> None:
    import pandas as pd
    import xarray as xr

    from . import __version__
    from .metrics import copied_in_most_seeds, frechet_distance
    from .store import atomic_file, write_netcdf

    scores = {}
    for item in args.score:
        name, _, path = item.partition("=")
        scores[name] = xr.open_dataset(path, engine="h5netcdf").load()
    if "none" not in scores:
        raise InputError("eval-aggregate: the unedited model's scores (--score none=PATH) are required")
    base = scores["none"]
    prompts = [str(p) for p in base.prompt.values]
    seeds = [int(s) for s in base.seed.values]
    for name, ds in scores.items():
        if [str(p) for p in ds.prompt.values] != prompts or [int(s) for s in ds.seed.values] != seeds:
            raise InputError(f"eval-aggregate: {name} was sampled on other prompts or seeds than the unedited model")
    groups = np.array([str(g) for g in base.group.values])
    subsets = subset_prompts_from_json(json.loads(Path(args.subsets_json).read_text()) if Path(args.subsets_json).exists()
                                       else json.loads(args.subsets_json))
    labels = list(subsets)
    in_test = fair_split(prompts, subsets)  # (subset, prompt)
    variants = [v for v in VARIANTS if v == "pruned" and labels and all(lb in scores for lb in labels) or v in scores]
    n_v, n_sub, n_p, n_s = len(variants), len(labels), len(prompts), len(seeds)

    def source(v: str, label: str):
        return scores[label] if v == "pruned" else scores[v]

    per = {k: np.full((n_v, n_sub, n_p, n_s), np.nan) for k in ("copy_similarity", "clip_score", "follows_prompt")}
    for vi, v in enumerate(variants):
        for si, lb in enumerate(labels):
            ds = source(v, lb)
            for k in per:
                per[k][vi, si] = np.where(in_test[si][:, None], ds[k].values, np.nan)
    mem, non = groups == "memorized", groups == "nonmemorized"
    thr = args.copy_threshold
    summary = {k: np.full((n_v, n_sub), np.nan) for k in (
        "copy_rate", "mean_copy_similarity", "clip_score_memorized", "clip_score_nonmemorized", "prompt_following",
        "frechet_distance", "seconds_per_image", "cpu_seconds_per_image", "sampling_seconds", "mask_seconds",
        "total_seconds", "copy_rate_own_subset")}
    copied = np.full((n_v, n_sub, n_p), np.nan)
    fid_ref, fid_ref_name = None, ""
    if non.any():
        if args.fid_reference != "unedited":
            _, featurize, _ = _features(args)
            fid_ref, fid_ref_name = reference_features(args, [p for p, g in zip(prompts, groups) if g == "nonmemorized"],
                                                       seeds, featurize)
        else:
            fid_ref_name = reference_features(args, [], seeds, None)[1]
    ref = fid_ref if fid_ref is not None else base.features.values[non].reshape(-1, base.sizes["feature"])
    costs = json.loads(args.mask_costs_json) if args.mask_costs_json else {}
    missing_benchmarks: list[str] = []
    mask_seconds = {}
    for lb in labels:
        mask_seconds[lb], miss = benchmark_seconds(costs.get(lb, []))
        missing_benchmarks += miss
    for vi, v in enumerate(variants):
        for si, lb in enumerate(labels):
            ds = source(v, lb)
            sim = per["copy_similarity"][vi, si][mem]
            rate_valid = ~np.isnan(sim).all(-1)
            copied[vi, si, mem] = np.where(rate_valid, copied_in_most_seeds(sim, thr), np.nan)
            summary["copy_rate"][vi, si] = copy_rate(sim, thr)
            summary["mean_copy_similarity"][vi, si] = np.nanmean(sim) if rate_valid.any() else np.nan
            summary["clip_score_memorized"][vi, si] = np.nanmean(per["clip_score"][vi, si][mem]) if mem.any() else np.nan
            if non.any():
                summary["clip_score_nonmemorized"][vi, si] = np.nanmean(per["clip_score"][vi, si][non])
                f = per["follows_prompt"][vi, si][non]
                summary["prompt_following"][vi, si] = np.nanmean(f) if not np.isnan(f).all() else np.nan
                feats = ds.features.values[non].reshape(-1, ds.sizes["feature"])
                # the unedited model against itself is 0 by definition (not sqrtm's rounding); never below 0
                fid = 0.0 if (fid_ref is None and v == "none") else max(frechet_distance(feats, ref), 0.0)
                summary["frechet_distance"][vi, si] = fid
            own = ds.copy_similarity.values[~in_test[si] & mem]
            if v == "pruned" and own.size:
                summary["copy_rate_own_subset"][vi, si] = copy_rate(own, thr)
            spi = float(ds.attrs["timing_seconds_per_image"])
            summary["seconds_per_image"][vi, si] = spi
            summary["cpu_seconds_per_image"][vi, si] = float(ds.attrs["timing_cpu_seconds_per_image"])
            summary["sampling_seconds"][vi, si] = spi * in_test[si].sum() * n_s
            summary["mask_seconds"][vi, si] = mask_seconds[lb] if v == "pruned" else 0.0
            summary["total_seconds"][vi, si] = summary["sampling_seconds"][vi, si] + summary["mask_seconds"][vi, si]
    long_names = {
        "copy_rate": f"fraction of memorized test prompts copied ({base.attrs['copy_metric']} >= {thr} in most seeds)",
        "mean_copy_similarity": f"mean {base.attrs['copy_metric']} to the training images over memorized test prompts and seeds",
        "clip_score_memorized": "mean CLIP score on memorized test prompts",
        "clip_score_nonmemorized": "mean CLIP score on non-memorized prompts",
        "prompt_following": "fraction of non-memorized scene generations whose 4 attributes read back (testbed)",
        "frechet_distance": f"Frechet distance of non-memorized generations ({base.attrs['feature_space']}) to {fid_ref_name}",
        "seconds_per_image": "wall-clock generation time per image (Wen: its optimisation included)",
        "cpu_seconds_per_image": "process CPU time per image",
        "sampling_seconds": "seconds_per_image x images in the subset's test set",
        "mask_seconds": "pruned models: measured cost of their masks and checkpoint (Snakemake benchmarks)",
        "total_seconds": "sampling_seconds + mask_seconds",
        "copy_rate_own_subset": "pruned models: copy rate on the memorized prompts of their own subset (not a test set)",
    }
    dims4 = ("variant", "subset", "prompt", "seed")
    out = xr.Dataset(
        {
            **{k: (dims4, v) for k, v in per.items()},
            "copied": (("variant", "subset", "prompt"), copied, {"long_name": "prompt copies (most seeds >= threshold)"}),
            "in_test": (("subset", "prompt"), in_test, {"long_name": "prompt is in the subset's test set (fair split)"}),
            **{k: (("variant", "subset"), v, {"long_name": long_names[k]}) for k, v in summary.items()},
        },
        coords={"variant": variants, "subset": labels, "prompt": np.array(prompts, dtype=object), "seed": seeds,
                "group": ("prompt", groups.astype(object)),
                "collection": ("subset", np.array([lb.split("/")[0] for lb in labels], dtype=object))},
        attrs={"copy_threshold": thr, "copy_metric": base.attrs["copy_metric"], "feature_space": base.attrs["feature_space"],
               "frechet_reference": fid_ref_name, "memprune_version": __version__,
               "fair_split": "a pruned model's metrics (and the baselines' beside it) use the memorized prompts not in its subset",
               "mask_cost_included": args.mask_cost_note or "",
               "mask_benchmarks_missing": ", ".join(missing_benchmarks)},
    )
    for k, ds in scores.items():
        for a in ("wen_mean_iterations", "wen_converged_fraction", "wen_mean_final_loss"):
            if f"timing_{a}" in ds.attrs:
                out.attrs[a] = float(ds.attrs[f"timing_{a}"])
    write_netcdf(out, args.out)
    table = summary_table(out)
    with atomic_file(Path(args.summary)) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if missing_benchmarks:
        log.warning("mask cost: benchmark files missing (not counted): %s", ", ".join(missing_benchmarks[:5]))
    plot_copy_vs_clip(out, args.fig_scatter)
    plot_fid_time(out, args.fig_bars)
    plot_grid(args, out, scores, args.fig_grid)


def summary_table(ds):
    """One row per variant (means over the subsets' test sets; pruned = mean over pruned models), then one
    row per pruned model; ratios to the unedited model on the same test sets."""
    import pandas as pd

    cols = ["copy_rate", "mean_copy_similarity", "clip_score_memorized", "clip_score_nonmemorized",
            "prompt_following", "frechet_distance", "seconds_per_image", "cpu_seconds_per_image", "mask_seconds",
            "total_seconds"]
    rows = []

    def ratios(row: dict, none: dict) -> dict:
        with np.errstate(invalid="ignore", divide="ignore"):
            for k, r in (("copy_rate", "copy_rate_vs_none"), ("prompt_following", "prompt_following_vs_none"),
                         ("frechet_distance", "frechet_vs_none"), ("seconds_per_image", "time_per_image_vs_none"),
                         ("total_seconds", "total_time_vs_none")):
                row[r] = row[k] / none[k] if np.isfinite(none[k]) and abs(none[k]) > 1e-9 else np.nan
        return row

    none = {k: float(np.nanmean(ds[k].sel(variant="none").values)) if not np.isnan(ds[k].sel(variant="none").values).all()
            else np.nan for k in cols}
    for v in ds.variant.values:
        vals = {k: ds[k].sel(variant=v).values for k in cols}
        row = {"variant": str(v), "subset": "mean" if v == "pruned" else "all",
               **{k: float(np.nanmean(a)) if not np.isnan(a).all() else np.nan for k, a in vals.items()}}
        rows.append(ratios(row, none))
    if "pruned" in ds.variant.values:
        for lb in ds.subset.values:
            row = {"variant": "pruned", "subset": str(lb)}
            for k in cols:
                row[k] = float(ds[k].sel(variant="pruned", subset=lb))
            none_s = {k: float(ds[k].sel(variant="none", subset=lb)) for k in cols}
            rows.append(ratios(row, none_s))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- figures

_COLOURS = {"none": "tab:red", "pruned": "tab:blue", "wen": "tab:green"}
_NAMES = {"none": "no mitigation", "pruned": "pruned models", "wen": "Wen et al. (inference-time)"}


def _save(fig, path) -> None:
    from .store import atomic_file

    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_copy_vs_clip(ds, path) -> None:
    """The paper's Figure 3 (left): CLIP score vs copy similarity on the memorized test prompts, one point per
    pruned model (and the baselines on that model's test set, small), the means large."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for v in ds.variant.values:
        x = ds.mean_copy_similarity.sel(variant=v).values
        y = ds.clip_score_memorized.sel(variant=v).values
        ax.scatter(x, y, s=14, alpha=0.45, color=_COLOURS[str(v)])
        ax.scatter(np.nanmean(x), np.nanmean(y), s=110, marker="*", color=_COLOURS[str(v)], edgecolor="k",
                   label=_NAMES[str(v)])
    ax.set_xlabel(f"{ds.attrs['copy_metric'].upper()} to the training image (lower: less copying)")
    ax.set_ylabel("CLIP score (higher: closer to the prompt)")
    ax.set_title("Memorized test prompts")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_fid_time(ds, path) -> None:
    """The paper's Figure 3 (right): Frechet distance on non-memorized prompts and wall-clock time on the test
    set per variant (pruned: mean and spread over models; time stacked: sampling + mask computation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [str(v) for v in ds.variant.values]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, v in enumerate(variants):
        fid = ds.frechet_distance.sel(variant=v).values
        a1.bar(i, np.nanmean(fid), yerr=np.nanstd(fid) if v == "pruned" else None, color=_COLOURS[v], capsize=4)
        samp = np.nanmean(ds.sampling_seconds.sel(variant=v).values)
        mask = np.nanmean(ds.mask_seconds.sel(variant=v).values)
        a2.bar(i, samp, color=_COLOURS[v])
        a2.bar(i, mask, bottom=samp, color=_COLOURS[v], alpha=0.4, hatch="//")
    for a in (a1, a2):
        a.set_xticks(range(len(variants)), [_NAMES[v] for v in variants], fontsize=8, rotation=10)
    a1.set_ylabel("Frechet distance (non-memorized prompts)")
    a1.set_title(ds.attrs["feature_space"], fontsize=9)
    a2.set_ylabel("wall-clock seconds on the test set")
    a2.set_title("hatched: masks (capture share + masks + prune)", fontsize=9)
    _save(fig, path)
    plt.close(fig)


def plot_grid(args, ds, scores: dict, path, n_prompts: int = 2, n_models: int = 5) -> None:
    """The paper's Figure 4: for a few memorized prompts in every shown model's test set, rows = the training
    image and the unedited model, then several pruned models (and Wen); columns = seeds."""
    from PIL import Image

    labels = [str(s) for s in ds.subset.values if str(s) in scores][:n_models]
    mem = np.array([str(g) == "memorized" for g in ds.group.values])
    common = mem & ds.in_test.sel(subset=labels).values.all(axis=0) if labels else mem
    picks = [i for i in np.flatnonzero(common)][:n_prompts]
    if not picks:
        picks = list(np.flatnonzero(mem))[:n_prompts] or [0]
    seeds = [int(s) for s in ds.seed.values]
    rows_spec = [("none", "none")] + [("pruned", lb) for lb in labels] + ([("wen", "wen")] if "wen" in scores else [])
    samples = {name: Samples(scores[name].attrs["samples"]).images(picks) for _, name in rows_spec}
    gt = GroundTruth(args.data, args.ground_truth, args.memorized) if (args.data or args.ground_truth) else None
    prompts = [str(p) for p in ds.prompt.values]
    h, w = samples["none"].shape[2:4]  # (picked prompt, seed, H, W, 3)
    pad = 2
    n_rows = len(picks) * (len(rows_spec) + 1)
    canvas = np.full((n_rows * (h + pad), len(seeds) * (w + pad), 3), 255, np.uint8)
    r = 0
    for k, pi in enumerate(picks):
        if gt is not None:
            try:
                ref = gt.images(prompts[pi])[0]
                if ref.shape[:2] != (h, w):
                    ref = np.asarray(Image.fromarray(ref).resize((w, h)))
                canvas[r * (h + pad): r * (h + pad) + h, :w] = ref
            except InputError:
                pass
        r += 1
        for _, name in rows_spec:
            for c in range(len(seeds)):
                canvas[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = samples[name][k, c]
            r += 1
    scale = max(1, 96 // h)
    big = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    from .store import atomic_file

    with atomic_file(Path(path)) as tmp:
        big.save(tmp, format="PNG")
    log.info("grid: prompts %s; rows per prompt: training image, %s", [prompts[i][:40] for i in picks],
             ", ".join(n for _, n in rows_spec))


# ---------------------------------------------------------------------------------------------- CLI


def _none_or_int(text: str):
    return None if text in ("", "none", "None", "null") else int(text)


def _none_or_str(text: str):
    return None if text in ("", "none", "None", "null") else text


def _none_or_float(text: str):
    return None if text in ("", "none", "None", "null") else float(text)


def _prompt_args(p) -> None:
    p.add_argument("--memorized", required=True, help="memorized prompt file")
    p.add_argument("--max-memorized", type=_none_or_int, default=None)
    p.add_argument("--nonmemorized", type=_none_or_str, default=None, help="non-memorized prompt file")
    p.add_argument("--max-nonmemorized", type=_none_or_int, default=None)


def _metric_args(p) -> None:
    p.add_argument("--data", type=_none_or_str, default=None, help="testbed dataset directory (ground truth, scenes)")
    p.add_argument("--ground-truth", type=_none_or_str, default=None, help="directory <root>/<index>/*.png")
    p.add_argument("--sscd", type=_none_or_str, default=None, help="sscd_disc_large.torchscript.pt (default: SSIM)")
    p.add_argument("--clip-name", type=_none_or_str, default=None, help="open_clip model name (ViT-H-14, ...)")
    p.add_argument("--clip-weights", type=_none_or_str, default=None, help="weights file, or a local-dir folder")
    p.add_argument("--inception", type=_none_or_str, default=None, help="Inception v3 safetensors (default: CLIP features)")
    p.add_argument("--device", default="auto")


def add_eval_arguments(sub, cmd_sample, cmd_score, cmd_aggregate) -> None:
    """The `eval-sample`, `eval-score` and `eval-aggregate` subcommands (argument definitions live here, next
    to the code that reads them)."""
    p = sub.add_parser("eval-sample", help="evaluation: generate the test prompts x seeds with one model variant")
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--model", required=True, help="the base diffusers pipeline")
    p.add_argument("--checkpoint", type=_none_or_str, default=None, help="pruned checkpoint directory (--variant pruned)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seeds", default="0,1,2,3")
    _prompt_args(p)
    from .sampling import WEN_TARGET_LOSS

    p.add_argument("--wen-lr", type=float, default=0.05, help="Wen et al.: AdamW learning rate on the text embedding")
    p.add_argument("--wen-max-iters", type=int, default=10)
    p.add_argument("--wen-target-loss", type=_none_or_float, default=WEN_TARGET_LOSS)
    p.add_argument("--out", required=True, help="samples directory (PNGs, index.csv, timing.json)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval-score", help="evaluation: copy similarity, CLIP score, features of one variant's samples")
    p.add_argument("--samples", required=True)
    p.add_argument("--memorized", type=_none_or_str, default=None, help="memorized prompt file (index of the ground-truth layout)")
    _metric_args(p)
    p.add_argument("--out", required=True, help="scores .nc")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("eval-aggregate", help="evaluation: fair split, copy rates, FID, time; eval.nc, table, figures")
    p.add_argument("--score", action="append", required=True, help="VARIANT=scores.nc (none, wen, or a pruned subset label)")
    p.add_argument("--subsets-json", required=True, help='{"<collection>/<i>": {"file": prompts, "indices": [...]}}')
    p.add_argument("--mask-costs-json", default=None, help='{"<collection>/<i>": [[benchmark.tsv, share], ...]}')
    p.add_argument("--mask-cost-note", default=None)
    p.add_argument("--copy-threshold", type=float, default=0.4)
    p.add_argument("--fid-reference", choices=["renders", "images", "unedited"], default="renders")
    p.add_argument("--reference-images", type=_none_or_str, default=None, help="fid-reference images: <root>/<index>/*.png")
    p.add_argument("--memorized", type=_none_or_str, default=None)
    p.add_argument("--nonmemorized", type=_none_or_str, default=None)
    _metric_args(p)
    p.add_argument("--out", required=True, help="eval.nc")
    p.add_argument("--summary", required=True, help="eval_summary.csv")
    p.add_argument("--fig-scatter", required=True)
    p.add_argument("--fig-bars", required=True)
    p.add_argument("--fig-grid", required=True)
    p.set_defaults(func=cmd_aggregate)
