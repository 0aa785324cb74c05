"""`eval-aggregate`: the evaluated models' scores on the fair split -> `eval.nc`, the summary table, the figures.

eval.nc has dims (variant, subset, prompt, seed): `variant` the variant ids in the models JSON's order (`none`,
`pruned:<method>` per localization method, other variants by name), `subset` the subsets of the per-subset
models (the union over methods, first-seen order). The cell (pruned:m, s) is the model pruned with method m's
mask of subset s (NaN where m has no model for s); a baseline's cell (v, s) is its one model on s's test set.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from memprune.errors import InputError
from memprune.evaluate.training_images import TrainingImages
from memprune.evaluate.prompts import (
    REFERENCE,
    ModelEntry,
    fair_split,
    one_per_subset,
    read_models,
    subset_prompts,
)
from memprune.evaluate.copies import same_metric
from memprune.evaluate import intervals
from memprune.evaluate.eval_intervals import add_intervals, own_counts, summary_intervals
from memprune.evaluate.score import MetricOptions

if TYPE_CHECKING:  # imported where used: importing this module stays light
    import xarray as xr

log = logging.getLogger(__name__)

PER_PROMPT = ("copy_similarity", "clip_score", "follows_prompt")
SUMMARY = ("copy_rate", "mean_copy_similarity", "clip_score_memorized", "clip_score_nonmemorized", "prompt_following",
           "frechet_distance", "seconds_per_image", "cpu_seconds_per_image", "sampling_seconds", "mask_seconds",
           "total_seconds", "copy_rate_own_subset")
# timing entries of the samples recorded in eval.nc's attrs (Wen et al.'s optimisation, when it is evaluated)
RECORDED_TIMING = ("wen_mean_iterations", "wen_converged_fraction", "wen_mean_final_loss")
TABLE_COLUMNS = ("copy_rate", "mean_copy_similarity", "clip_score_memorized", "clip_score_nonmemorized",
                 "prompt_following", "frechet_distance", "seconds_per_image", "cpu_seconds_per_image", "mask_seconds",
                 "total_seconds")
RATIOS = (("copy_rate", "copy_rate_vs_none"), ("prompt_following", "prompt_following_vs_none"),
          ("frechet_distance", "frechet_vs_none"), ("seconds_per_image", "time_per_image_vs_none"),
          ("total_seconds", "total_time_vs_none"))


def load_scores(models: list[ModelEntry]) -> dict[str, "xr.Dataset"]:
    """{model key: its scores}, every model checked to be sampled on the unedited model's prompts and seeds."""
    import xarray as xr

    scores = {m.key: xr.open_dataset(m.scores, engine="h5netcdf").load() for m in models}
    base = scores[next(m.key for m in models if m.vid == REFERENCE)]
    prompts, seeds = [str(p) for p in base.prompt.values], [int(s) for s in base.seed.values]
    for key, ds in scores.items():
        if [str(p) for p in ds.prompt.values] != prompts or [int(s) for s in ds.seed.values] != seeds:
            raise InputError(f"eval-aggregate: {key} was sampled on other prompts or seeds than the unedited model")
    return scores


def layout(models: list[ModelEntry]) -> tuple[list[str], dict[str, list[str]], dict[tuple[str, str], ModelEntry]]:
    """(variant ids, {subset: its prompts}, {(variant id, subset): the model of that cell}). Without any
    per-subset model, one subset `all` whose test set is every prompt."""
    vids = list(dict.fromkeys(m.vid for m in models))
    subsets = subset_prompts(models) or {"all": []}
    cells = {(m.vid, lb): m for m in models if not m.per_subset for lb in subsets}
    cells.update({(m.vid, m.subset): m for m in models if m.per_subset})
    return vids, subsets, cells


def benchmark_record(path) -> dict[str, float] | None:
    """A Snakemake benchmark file's wall seconds `s` and CPU seconds `cpu_time` (those of the two it has), each the
    mean over its rows (one row per run, several with `repeat`); None when the file is absent or has no row."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        return None
    return {key: float(np.mean([float(r[key]) for r in rows])) for key in ("s", "cpu_time") if key in rows[0]}


def benchmark_seconds(parts) -> tuple[float, list[str]]:
    """Sum of share * s over Snakemake benchmark files [(tsv, share), ...]; and the files not found."""
    total, missing = 0.0, []
    for path, share in parts:
        if not Path(path).exists():
            missing.append(str(Path(path)))
            continue
        record = benchmark_record(path)
        if record:
            total += share * record["s"]
    return total, missing


def reference_features(fid_reference: str, prompts: list[str], seeds: list[int], featurize, data=None,
                       reference_images=None, nonmemorized=None) -> tuple[np.ndarray | None, str]:
    """Frechet reference of the non-memorized prompts: `renders` (testbed: each held-out scene rendered once
    per seed, the first render canonical and the others with the dataset's jitter), `images` (real images
    `<root>/<index>/*.png`, index = the prompt's position in the non-memorized file) or `unedited` (None:
    the unedited model's generations are the reference)."""
    if fid_reference == "unedited" or not prompts:
        return None, "the unedited model's generations of the same prompts and seeds"
    if fid_reference == "renders":
        from memprune.testbed.scenes import render_scene

        gt = TrainingImages(data, None, None)
        images = []
        for pi, p in enumerate(prompts):
            if p not in gt.attributes:
                raise InputError(f"fid_reference renders: {p[:60]!r} is not a testbed scene caption")
            for si, seed in enumerate(seeds):
                rng = None if si == 0 else np.random.default_rng([seed, pi])
                images.append(render_scene(gt.attributes[p], rng))
        return featurize(np.stack(images)), "renders of the requested scenes (testbed.render_scene, one per seed)"
    if not reference_images or not nonmemorized:
        raise InputError("fid_reference images: give --reference-images DIR and the --nonmemorized prompt file")
    gt = TrainingImages(None, reference_images, nonmemorized, kind="non-memorized")
    images = np.concatenate([gt.images(p, size=(512, 512)) for p in prompts])
    return featurize(images), f"real images under {Path(reference_images)}"


def cell_metrics(ds, ref_feats, ref_moments, in_test: np.ndarray, mem: np.ndarray, non: np.ndarray,
                 threshold: float, per_subset: bool, self_reference: bool) -> dict:
    """One (variant, subset) cell: its per-prompt arrays (outside the test set NaN), `copied` and the summary
    values, from the scores `ds` of the cell's model; `in_test` (prompt,) is the subset's test set, `ref_feats`
    the Frechet reference features (`ref_moments`: their `FrechetReference`, for the interval; `self_reference`: they
    are this model's own, the distance is 0)."""
    from memprune.evaluate.metrics import copied_in_most_seeds, copy_rate, frechet_distance

    out = {k: np.where(in_test[:, None], ds[k].values, np.nan) for k in PER_PROMPT}
    sim = out["copy_similarity"][mem]
    rate_valid = ~np.isnan(sim).all(-1)
    out["copied"] = np.where(rate_valid, copied_in_most_seeds(sim, threshold), np.nan)
    out["copy_rate"] = copy_rate(sim, threshold)
    out["mean_copy_similarity"] = np.nanmean(sim) if rate_valid.any() else np.nan
    out["clip_score_memorized"] = np.nanmean(out["clip_score"][mem]) if mem.any() else np.nan
    if non.any():
        out["clip_score_nonmemorized"] = np.nanmean(out["clip_score"][non])
        f = out["follows_prompt"][non]
        out["prompt_following"] = np.nanmean(f) if not np.isnan(f).all() else np.nan
        per_image = ds.features.values[non]  # (prompt, seed, feature)
        feats = per_image.reshape(-1, ds.sizes["feature"])
        # the unedited model against itself is 0 by definition (not sqrtm's rounding), with no interval; never below 0
        out["frechet_distance"] = 0.0 if self_reference else max(frechet_distance(feats, ref_feats), 0.0)
        out["frechet_resampled"] = (np.full(intervals.FRECHET_RESAMPLES, np.nan) if self_reference else
                                    ref_moments.bootstrap(per_image, intervals.FRECHET_RESAMPLES, intervals.SEED))
    own = ds.copy_similarity.values[~in_test & mem]
    if per_subset and own.size:
        out["copy_rate_own_subset"] = copy_rate(own, threshold)
    out["seconds_per_image"] = float(ds.attrs["timing_seconds_per_image"])
    out["cpu_seconds_per_image"] = float(ds.attrs["timing_cpu_seconds_per_image"])
    out["sampling_seconds"] = out["seconds_per_image"] * in_test.sum() * ds.sizes["seed"]
    return out


def long_names(copy_metric: str, feature_space: str, threshold: float, fid_ref_name: str) -> dict[str, str]:
    return {
        "copy_rate": f"fraction of memorized test prompts copied ({copy_metric} >= {threshold} in most seeds)",
        "mean_copy_similarity": f"mean {copy_metric} to the training images over memorized test prompts and seeds",
        "clip_score_memorized": "mean CLIP score on memorized test prompts",
        "clip_score_nonmemorized": "mean CLIP score on non-memorized prompts",
        "prompt_following": "fraction of non-memorized scene generations whose 4 attributes read back (testbed)",
        "frechet_distance": f"Frechet distance of non-memorized generations ({feature_space}) to {fid_ref_name}",
        "seconds_per_image": "wall-clock generation time per image (Wen: its optimisation included)",
        "cpu_seconds_per_image": "process CPU time per image",
        "sampling_seconds": "seconds_per_image x images in the subset's test set",
        "mask_seconds": "pruned models: measured cost of their masks and checkpoint (Snakemake benchmarks)",
        "total_seconds": "sampling_seconds + mask_seconds",
        "copy_rate_own_subset": "pruned models: copy rate on the memorized prompts of their own subset (not a test "
                                "set)",
    }


def fraction_over(copy_similarity: np.ndarray, mem: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """(variant, subset, threshold): the fraction of memorized test images (prompt x seed) whose copy similarity
    reaches each threshold (MemBench's measure at SSCD 0.5; Wen et al. count SSCD 0.7); NaN for an empty cell."""
    sim = copy_similarity[:, :, mem]  # (variant, subset, prompt, seed), NaN outside the test sets
    valid = ~np.isnan(sim)
    n = valid.sum(axis=(2, 3))
    with np.errstate(invalid="ignore"):
        hits = np.stack([(np.nan_to_num(sim, nan=-np.inf) >= t).sum(axis=(2, 3)) for t in thresholds], axis=-1)
        return np.where(n[..., None] > 0, hits / np.maximum(n, 1)[..., None], np.nan)


def eval_dataset(models: list[ModelEntry], scores: dict, threshold: float, fid_reference: str = "renders",
                 metrics: MetricOptions | None = None, data=None, reference_images=None, nonmemorized=None,
                 mask_cost_note: str | None = None, report_thresholds: list[float] | None = None) -> "xr.Dataset":
    """The eval.nc dataset (see the module docstring) of the models and their loaded scores; with
    `report_thresholds`, also `fraction_over (variant, subset, threshold)`."""
    import xarray as xr

    from memprune import __version__

    vids, subsets, cells = layout(models)
    labels = list(subsets)
    base = scores[cells[(REFERENCE, labels[0])].key]
    prompts, seeds = [str(p) for p in base.prompt.values], [int(s) for s in base.seed.values]
    groups = np.array([str(g) for g in base.group.values])
    in_test = fair_split(prompts, subsets)  # (subset, prompt)
    mem, non = groups == "memorized", groups == "nonmemorized"
    n_v, n_sub, n_p, n_s = len(vids), len(labels), len(prompts), len(seeds)
    per = {k: np.full((n_v, n_sub, n_p, n_s), np.nan) for k in PER_PROMPT}
    summary = {k: np.full((n_v, n_sub), np.nan) for k in SUMMARY}
    copied = np.full((n_v, n_sub, n_p), np.nan)
    frechet_resampled = np.full((n_v, n_sub, intervals.FRECHET_RESAMPLES), np.nan)
    fid_ref, fid_ref_name = None, ""
    if non.any():
        featurize = (metrics or MetricOptions()).features()[1] if fid_reference != "unedited" else None
        fid_ref, fid_ref_name = reference_features(fid_reference,
                                                   [p for p, g in zip(prompts, groups) if g == "nonmemorized"],
                                                   seeds, featurize, data, reference_images, nonmemorized)
    ref = fid_ref if fid_ref is not None else base.features.values[non].reshape(-1, base.sizes["feature"])
    from memprune.evaluate.metrics import FrechetReference

    ref_moments = FrechetReference(ref) if non.any() else None  # once for every cell
    missing_benchmarks: list[str] = []
    for vi, v in enumerate(vids):
        for si, lb in enumerate(labels):
            m = cells.get((v, lb))
            if m is None:
                continue
            cell = cell_metrics(scores[m.key], ref, ref_moments, in_test[si], mem, non, threshold, m.per_subset,
                                self_reference=fid_ref is None and v == REFERENCE)
            for k in PER_PROMPT:
                per[k][vi, si] = cell[k]
            copied[vi, si, mem] = cell["copied"]
            if "frechet_resampled" in cell:
                frechet_resampled[vi, si] = cell["frechet_resampled"]
            for k in SUMMARY:
                if k in cell:
                    summary[k][vi, si] = cell[k]
            summary["mask_seconds"][vi, si], miss = benchmark_seconds(m.mask_costs)
            missing_benchmarks += miss
            summary["total_seconds"][vi, si] = summary["sampling_seconds"][vi, si] + summary["mask_seconds"][vi, si]
    same_metric([d.attrs for d in scores.values()], "eval-aggregate: the models' scores")  # one similarity for all
    names = long_names(base.attrs["copy_metric"], base.attrs["feature_space"], threshold, fid_ref_name)
    dims4 = ("variant", "subset", "prompt", "seed")
    out = xr.Dataset(
        {
            **{k: (dims4, v) for k, v in per.items()},
            "copied": (("variant", "subset", "prompt"), copied,
                       {"long_name": "prompt copies (most seeds >= threshold)"}),
            "in_test": (("subset", "prompt"), in_test,
                        {"long_name": "prompt is in the subset's test set (fair split)"}),
            **{k: (("variant", "subset"), v, {"long_name": names[k]}) for k, v in summary.items()},
            "frechet_distance_resampled": (("variant", "subset", "resample"), frechet_resampled,
                                           {"long_name": "frechet_distance on prompts drawn with replacement",
                                            "interval_method": intervals.frechet_method()}),
        },
        coords={"variant": vids, "subset": labels, "prompt": np.array(prompts, dtype=object), "seed": seeds,
                "group": ("prompt", groups.astype(object)),
                "collection": ("subset", np.array([lb.split("/")[0] for lb in labels], dtype=object))},
        attrs={"copy_threshold": threshold, "copy_metric": base.attrs["copy_metric"],
               "copy_checkpoint": base.attrs.get("copy_checkpoint", ""),
               "feature_space": base.attrs["feature_space"], "frechet_reference": fid_ref_name,
               "memprune_version": __version__,
               "fair_split": "a pruned model's metrics (and the baselines' beside it) use the memorized prompts not in "
                             "its subset",
               "mask_cost_included": mask_cost_note or "",
               "mask_benchmarks_missing": ", ".join(missing_benchmarks)},
    )
    if report_thresholds:
        thr = [float(t) for t in report_thresholds]
        out["fraction_over"] = (("variant", "subset", "threshold"), fraction_over(per["copy_similarity"], mem, thr),
                                {"long_name": f"fraction of memorized test images ({base.attrs['copy_metric']}) at or "
                                              "above "
                                              "each threshold"})
        out = out.assign_coords(threshold=thr)
    for ds in scores.values():
        for a in RECORDED_TIMING:
            if f"timing_{a}" in ds.attrs:
                out.attrs[a] = float(ds.attrs[f"timing_{a}"])
    return add_intervals(out, own_counts(cells, scores, labels, in_test, mem))


def summary_table(ds, per_subset: list[str] | None = None):
    """One row per variant id (means over the subsets' test sets; a per-subset variant, e.g. pruned:wanda, the
    mean over its models), then one row per model of each per-subset variant; ratios to the unedited model on
    the same test sets. `per_subset`: those variant ids (default: the registry's variants with checkpoints)."""
    import pandas as pd

    vids = [str(v) for v in ds.variant.values]
    per_subset = [v for v in vids if one_per_subset(v)] if per_subset is None else per_subset

    def mean(a) -> float:
        return float(np.nanmean(a)) if not np.isnan(a).all() else np.nan

    def ratios(row: dict, none: dict) -> dict:
        with np.errstate(invalid="ignore", divide="ignore"):
            for k, r in RATIOS:
                row[r] = row[k] / none[k] if np.isfinite(none[k]) and abs(none[k]) > 1e-9 else np.nan
        return row

    none = {k: mean(ds[k].sel(variant=REFERENCE).values) for k in TABLE_COLUMNS}
    rows = [ratios({"variant": v, "subset": "mean" if v in per_subset else "all",
                    **{k: mean(ds[k].sel(variant=v).values) for k in TABLE_COLUMNS}}, none) for v in vids]
    for v in per_subset:
        for lb in ds.subset.values:
            if not np.isfinite(float(ds.seconds_per_image.sel(variant=v, subset=lb))):
                continue  # no model of this variant for this subset
            row = {"variant": v, "subset": str(lb),
                   **{k: float(ds[k].sel(variant=v, subset=lb)) for k in TABLE_COLUMNS}}
            rows.append(ratios(row, {k: float(ds[k].sel(variant=REFERENCE, subset=lb)) for k in TABLE_COLUMNS}))
    return pd.DataFrame(rows)


def aggregate(models_json: str, out: str | Path, summary: str | Path, fig_scatter: str | Path, fig_bars: str | Path,
              fig_grid: str | Path, copy_threshold: float = 0.4, fid_reference: str = "renders",
              metrics: MetricOptions | None = None, reference_images=None, memorized=None, nonmemorized=None,
              data=None, ground_truth=None, mask_cost_note: str | None = None,
              report_thresholds: list[float] | None = None) -> "xr.Dataset":
    """eval.nc, the summary table (also printed) and the three figures of the models JSON's models."""
    import pandas as pd

    from memprune.formats.store import atomic_file, write_netcdf
    from memprune.evaluate.figures import plot_copy_vs_clip, plot_fid_time, plot_grid

    models = read_models(models_json)
    scores = load_scores(models)
    ds = eval_dataset(models, scores, copy_threshold, fid_reference, metrics, data, reference_images, nonmemorized,
                      mask_cost_note, report_thresholds)
    write_netcdf(ds, out)
    table = summary_table(ds)
    for t in ds.threshold.values if "fraction_over" in ds else []:  # per variant: mean over its subsets' test sets
        frac = ds.fraction_over.sel(threshold=t)
        table[f"fraction_over_{t:g}"] = [float(np.nanmean(frac.sel(variant=r.variant).values))
                                         if r.subset in ("all", "mean")
                                         else float(frac.sel(variant=r.variant, subset=r.subset))
                                         for r in table.itertuples()]
    table = summary_intervals(ds, table)
    with atomic_file(Path(summary)) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.drop(columns="interval_method").to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if ds.attrs["mask_benchmarks_missing"]:
        log.warning("mask cost: benchmark files missing (not counted): %s",
                    ", ".join(ds.attrs["mask_benchmarks_missing"].split(", ")[:5]))
    plot_copy_vs_clip(ds, fig_scatter)
    plot_fid_time(ds, fig_bars)
    gt = TrainingImages(data, ground_truth, memorized) if (data or ground_truth) else None
    plot_grid(ds, [(m, scores[m.key].attrs["samples"]) for m in models], fig_grid, gt)
    return ds
