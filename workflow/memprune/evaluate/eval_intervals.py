"""95% intervals of eval.nc's summaries, from its per-prompt variables (`memprune.evaluate.intervals`), for eval.nc,
the summary table and the leaderboard.

A summary of one (variant, subset) cell is a mean over the cell's (prompt, seed) values (a copy rate: over its
prompts' `copied`); a row over several subsets (a variant's `mean` row, a model without an edit on the
leaderboard) is the mean over those subsets of each one's summary. `pooled` writes either as a weighted mean over
prompts (weight: the prompt's share in it), so that every interval resamples prompts, each with all its seeds
and every subset it is tested in, and the paired difference to the unedited model resamples the same prompts for
both models. Rates (`copy_rate`): Wilson; means and fractions of images: the percentile bootstrap; differences
from the unedited model: the paired bootstrap; the Frechet distance: the bias-corrected percentile of its
replicates on resampled prompts (`frechet_distance_resampled`; over several subsets the mean of their
replicates, as the value is the mean of theirs).
"""

from __future__ import annotations

import numpy as np

from memprune.evaluate import intervals

REFERENCE = "none"
# (summary, per-prompt variable, prompt group, kind): kind "rate" a share of prompts, "mean" a mean over images
SPECS = (("copy_rate", "copied", "memorized", "rate"),
         ("mean_copy_similarity", "copy_similarity", "memorized", "mean"),
         ("clip_score_memorized", "clip_score", "memorized", "mean"),
         ("clip_score_nonmemorized", "clip_score", "nonmemorized", "mean"),
         ("prompt_following", "follows_prompt", "nonmemorized", "mean"))
KIND = {name: kind for name, _, _, kind in SPECS}
DIFFERENCES = ("copy_rate",)  # paired differences from the unedited model in eval.nc and the summary table


def methods() -> dict[str, str]:
    """The interval methods, as eval.nc's attributes name them."""
    return {"interval_level": intervals.LEVEL, "interval_method_rates": intervals.wilson_method(),
            "interval_method_means": intervals.bootstrap_method(),
            "interval_method_differences": intervals.paired_method(),
            "interval_method_frechet": intervals.frechet_method()}


def method_column() -> str:
    """The CSVs' `interval_method` column: what `_lo`/`_hi` and `_minus_none` columns are."""
    r, s = intervals.RESAMPLES, intervals.SEED
    return (f"95%: rates Wilson score (weighted: at Kish's effective n); means percentile bootstrap over prompts "
            f"with their seeds ({r} resamples, seed {s}); _minus_none paired bootstrap, same prompts and seeds ({r}, "
            f"seed {s}); frechet_distance bias-corrected percentile of the distance on resampled prompts "
            f"({intervals.FRECHET_RESAMPLES}, seed {s})")


def pooled(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (subset, prompt, seed), NaN where not measured -> per prompt (value, weight), such that sum(w v) / sum(w)
    is the mean over the subsets holding any value of each subset's mean over its (prompt, seed) values."""
    x = np.asarray(x, dtype=float)
    valid = ~np.isnan(x)
    n_cell = valid.sum(axis=(1, 2))  # (subset,)
    used = n_cell > 0
    if not used.any():
        return np.zeros(0), np.zeros(0)
    scale = np.where(used, 1.0 / (np.maximum(n_cell, 1) * used.sum()), 0.0)[:, None]  # (subset, 1)
    weight = (valid.sum(-1) * scale).sum(0)  # (prompt,)
    total = (np.nansum(x, -1) * scale).sum(0)
    keep = weight > 0
    return total[keep] / weight[keep], weight[keep]


def per_prompt(ds, name: str, variant: str, subsets: list[str], threshold: float | None = None) -> np.ndarray:
    """(subset, prompt, seed) of the per-prompt values behind summary `name` of `variant` on `subsets` (NaN
    outside the test sets); `fraction_over`: each image's 1 / 0 at `threshold`."""
    if name == "fraction_over":
        sim = ds.copy_similarity.sel(variant=variant, subset=subsets).values
        x = np.where(np.isnan(sim), np.nan, sim >= threshold)
        group = "memorized"
    else:
        _, var, group, _ = next(s for s in SPECS if s[0] == name)
        x = ds[var].sel(variant=variant, subset=subsets).values
        x = x if x.ndim == 3 else x[..., None]  # copied: one value per prompt
    keep = np.asarray([str(g) for g in ds.group.values]) == group
    return np.asarray(x, dtype=float)[:, keep]


def interval(ds, name: str, variant: str, subsets: list[str], threshold: float | None = None) -> intervals.Interval:
    """(estimate, lo, hi) of summary `name` (or `fraction_over` at `threshold`) of `variant` over `subsets`."""
    values, weights = pooled(per_prompt(ds, name, variant, subsets, threshold))
    if KIND.get(name) == "rate":
        return intervals.weighted_rate(values, weights)
    return intervals.bootstrap_mean(values, weights)


def frechet_interval(ds, variant: str, subsets: list[str]) -> tuple[float, float]:
    """(lo, hi) of `variant`'s Frechet distance over `subsets` (the mean of theirs): the percentile of the mean of
    their replicates; NaN without replicates (an eval.nc written before them, or the unedited model as its own
    reference)."""
    if "frechet_distance_resampled" not in ds:
        return np.nan, np.nan
    r = ds.frechet_distance_resampled.sel(variant=variant, subset=subsets).values  # (subset, resample)
    keep = ~np.isnan(r).all(-1)
    if not keep.any():
        return np.nan, np.nan
    value = float(np.mean(ds.frechet_distance.sel(variant=variant, subset=subsets).values[keep]))
    return intervals.percentile(r[keep].mean(0), estimate=value)


def difference(ds, name: str, variant: str, subsets: list[str], threshold: float | None = None) -> intervals.Interval:
    """(variant minus the unedited model, lo, hi) of summary `name` over `subsets`: the paired bootstrap over the
    prompts and seeds both have."""
    a = per_prompt(ds, name, variant, subsets, threshold)
    b = per_prompt(ds, name, REFERENCE, subsets, threshold)
    both = ~np.isnan(a) & ~np.isnan(b)
    va, w = pooled(np.where(both, a, np.nan))
    vb, _ = pooled(np.where(both, b, np.nan))
    return intervals.paired_difference(va, vb, w)


def own_counts(cells: dict, scores: dict, labels: list[str], in_test: np.ndarray, mem: np.ndarray) -> dict:
    """{(variant id, subset): memorized prompts of the subset itself with a generation}: the n of
    copy_rate_own_subset (per-subset models only)."""
    out = {}
    for (vid, lb), m in cells.items():
        if m.per_subset:
            own = scores[m.key].copy_similarity.values[~in_test[labels.index(lb)] & mem]
            out[(vid, lb)] = int((~np.isnan(own).all(-1)).sum()) if own.size else 0
    return out


def _bounds(ds, name: str, lo, hi, method: str, dims=("variant", "subset")) -> None:
    what = ds[name].attrs.get("long_name", name) if name in ds else name
    for end, values in (("lo", lo), ("hi", hi)):
        ds[f"{name}_{end}"] = (dims, values,
                               {"long_name": f"95% interval of {name} ({what}): {'lower' if end == 'lo' else 'upper'} "
                                             "end",
                                              "interval_method": method})


def add_intervals(ds, own: dict | None = None):
    """eval.nc with `<summary>_lo`/`_hi` for every summary of `SPECS` and `fraction_over` (per variant, subset
    and threshold), `copy_rate_own_subset` (Wilson over the subset's own prompts, `own`: `own_counts`), and
    `copy_rate_minus_none` with its interval (paired with the unedited model on the same subset's test set)."""
    vids, labels = [str(v) for v in ds.variant.values], [str(s) for s in ds.subset.values]
    shape = (len(vids), len(labels))
    for name, *_ in SPECS:
        got = np.full(shape + (2,), np.nan)
        for vi, v in enumerate(vids):
            for si, lb in enumerate(labels):
                got[vi, si] = interval(ds, name, v, [lb])[1:]
        _bounds(ds, name, got[..., 0], got[..., 1],
                intervals.wilson_method() if KIND[name] == "rate" else intervals.bootstrap_method())
    if "frechet_distance_resampled" in ds:
        got = np.array([[frechet_interval(ds, v, [lb]) for lb in labels] for v in vids]).reshape(shape + (2,))
        _bounds(ds, "frechet_distance", got[..., 0], got[..., 1], intervals.frechet_method())
    if "fraction_over" in ds:
        thr = [float(t) for t in ds.threshold.values]
        got = np.full(shape + (len(thr), 2), np.nan)
        for vi, v in enumerate(vids):
            for si, lb in enumerate(labels):
                for ti, t in enumerate(thr):
                    got[vi, si, ti] = interval(ds, "fraction_over", v, [lb], t)[1:]
        _bounds(ds, "fraction_over", got[..., 0], got[..., 1], intervals.bootstrap_method(),
                ("variant", "subset", "threshold"))
    if "copy_rate_own_subset" in ds:
        n = np.array([[(own or {}).get((v, lb), 0) for lb in labels] for v in vids], dtype=float)
        rate = ds.copy_rate_own_subset.values
        lo, hi = intervals.wilson(np.where(np.isnan(rate), 0, rate) * n, np.where(np.isnan(rate), 0, n))
        _bounds(ds, "copy_rate_own_subset", lo, hi, intervals.wilson_method())
    if REFERENCE in vids:
        for name in DIFFERENCES:
            got = np.full(shape + (3,), np.nan)
            for vi, v in enumerate(vids):
                for si, lb in enumerate(labels):
                    got[vi, si] = difference(ds, name, v, [lb])
            ds[f"{name}_minus_none"] = (("variant", "subset"), got[..., 0],
                                        {"long_name": f"{name} minus the unedited model's on the same test prompts and "
                                                      "seeds"})
            _bounds(ds, f"{name}_minus_none", got[..., 1], got[..., 2], intervals.paired_method())
    ds.attrs.update(methods())
    return ds


def summary_intervals(ds, table):
    """The summary table (`aggregate.summary_table`, with its `fraction_over_<t>` columns) with `_lo`/`_hi` beside
    each summary of `SPECS` and `fraction_over_<t>`, `copy_rate_minus_none` and its interval, and the column
    `interval_method`. A variant's `all`/`mean` row pools its subsets (`pooled`), as its values do."""
    subsets_all = [str(s) for s in ds.subset.values]
    thr = [float(t) for t in ds.threshold.values] if "fraction_over" in ds else []
    has_none = REFERENCE in [str(v) for v in ds.variant.values]
    extra = []
    for r in table.itertuples():
        subsets = subsets_all if r.subset in ("all", "mean") else [r.subset]
        row = {}
        for name, *_ in SPECS:
            row[f"{name}_lo"], row[f"{name}_hi"] = interval(ds, name, r.variant, subsets)[1:]
        row["frechet_distance_lo"], row["frechet_distance_hi"] = frechet_interval(ds, r.variant, subsets)
        for t in thr:
            row[f"fraction_over_{t:g}_lo"], row[f"fraction_over_{t:g}_hi"] = interval(ds, "fraction_over", r.variant,
                                                                                      subsets, t)[1:]
        for name in DIFFERENCES if has_none else ():
            est, lo, hi = difference(ds, name, r.variant, subsets)
            row.update({f"{name}_minus_none": est, f"{name}_minus_none_lo": lo, f"{name}_minus_none_hi": hi})
        extra.append(row)
    import pandas as pd

    out = pd.concat([table.reset_index(drop=True), pd.DataFrame(extra)], axis=1)
    out["interval_method"] = method_column()
    return out[intervals.next_to_values(list(out.columns))]
