"""The leaderboard's intervals (95%), from the stages' per-prompt data (`memprune.evaluate.intervals`):

* `<rate>_lo` / `<rate>_hi` beside every rate: `eval_copies` (Wilson; over several subsets, at Kish's effective
  number of prompts), `fraction_over_<t>` and `prompt_following` (bootstrap over prompts), `frechet_distance`
  (the bias-corrected percentile of its replicates on resampled prompts), `copies_<kind>`,
  `copies_another_<kind>` (Wilson over the counted prompts), `mr_<init>_<group>` (Wilson over the targets);
* `<rate>_minus_none`, its `_lo` / `_hi` and `_minus_none_excludes_zero` for `eval_copies`, `copies_<kind>` and
  `mr_<init>_<group>`: the model minus the unedited model on the same prompts (targets) and seeds, the paired
  bootstrap of per-prompt differences; the unedited model against itself is 0 in [0, 0], not excluding zero;
* `interval_method`: the methods, in words.

A stage file without per-prompt data (an eval.nc older than its `copied`) gives no interval: never one from the
summary alone.
"""

from __future__ import annotations

import numpy as np

from memprune.evaluate import intervals
from memprune.evaluate.eval_intervals import REFERENCE, difference, frechet_interval, interval, method_column


def _difference(name: str, est: float, lo: float, hi: float) -> dict:
    return {f"{name}_minus_none": est, f"{name}_minus_none_lo": lo, f"{name}_minus_none_hi": hi,
            f"{name}_minus_none_excludes_zero": intervals.excludes_zero(lo, hi)}


def eval_intervals(ds, entry: dict) -> dict:
    """eval.nc's intervals of one model's row (the cells `leaderboard.eval_columns` reads)."""
    if "copied" not in ds or "copy_similarity" not in ds:
        return {}
    variant = entry["variant"] if entry.get("method") is None else f"{entry['variant']}:{entry['method']}"
    subset = entry.get("subset")
    labels = [str(s) for s in ds.subset.values]
    if variant not in [str(v) for v in ds.variant.values] or (subset is not None and subset not in labels):
        return {}
    subsets = [subset] if subset is not None else labels
    est, lo, hi = interval(ds, "copy_rate", variant, subsets)
    if not np.isfinite(est):
        return {}
    row = {"eval_copies_lo": lo, "eval_copies_hi": hi}
    if REFERENCE in [str(v) for v in ds.variant.values]:
        row.update(_difference("eval_copies", *difference(ds, "copy_rate", variant, subsets)))
    for t in ds.threshold.values if "fraction_over" in ds else []:
        _, row[f"fraction_over_{float(t):g}_lo"], row[f"fraction_over_{float(t):g}_hi"] = \
            interval(ds, "fraction_over", variant, subsets, float(t))
    if "follows_prompt" in ds:
        _, row["prompt_following_lo"], row["prompt_following_hi"] = interval(ds, "prompt_following", variant, subsets)
    if "frechet_distance_resampled" in ds:
        row["frechet_distance_lo"], row["frechet_distance_hi"] = frechet_interval(ds, variant, subsets)
    return row


def _per_prompt(path: str) -> dict:
    """An attack file's per-prompt outcomes: {prompt: (group, actually memorized, copies another or NaN)}."""
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        other = (ds.copies_another.values.astype(float) if "copies_another" in ds
                 else np.full(ds.sizes["prompt"], np.nan))
        return {str(p): (str(g), float(a), float(o)) for p, g, a, o in
                zip(ds.prompt.values, ds.group.values, ds.actually_memorized.values.astype(float), other)}


def attack_intervals(path: str, reference: str | None, held_out: set[str]) -> dict:
    """Per kind, Wilson intervals of `copies_<kind>` and `copies_another_<kind>` over the prompts
    `leaderboard.attack_columns` counts, and the paired difference of `copies_<kind>` from the unedited model's
    attack file `reference` on those prompts."""
    mine = _per_prompt(path)
    theirs = _per_prompt(reference) if reference else {}
    row = {}
    for g in dict.fromkeys(v[0] for v in mine.values()):
        prompts = [p for p, v in mine.items() if v[0] == g and p not in held_out]
        for k, name in ((1, f"copies_{g}"), (2, f"copies_another_{g}")):
            values = np.array([mine[p][k] for p in prompts])
            if len(values) and not np.isnan(values).all():
                _, row[f"{name}_lo"], row[f"{name}_hi"] = intervals.weighted_rate(values)
        shared = [p for p in prompts if p in theirs]
        if shared:
            row.update(_difference(f"copies_{g}", *intervals.paired_difference(
                [mine[p][1] for p in shared], [theirs[p][1] for p in shared])))
    return row


def recovery_intervals(ds, model_id: str) -> dict:
    """Per group and start, the Wilson interval of `mr_<init>_<group>` over the targets, and its paired difference
    from the unedited model on the same targets."""
    variants = [str(v) for v in ds.variant.values]
    if model_id not in variants:
        return {}
    groups = np.asarray(ds.group.values).astype(str)
    groups = groups if groups.ndim == 1 else groups[0]
    prompts = np.asarray(ds.prompt.values).astype(str) if "prompt" in ds.coords else None
    same = REFERENCE in variants and (prompts is None or prompts.ndim == 1 or
                                      (prompts[variants.index(model_id)] == prompts[variants.index(REFERENCE)]).all())
    row = {}
    for g in dict.fromkeys(groups):
        idx = np.flatnonzero(groups == g)
        for init in ds.init.values:
            name = f"mr_{init}_{g}"
            mine = ds.recovered.sel(variant=model_id, init=init).isel(target=idx).values.astype(float)
            _, row[f"{name}_lo"], row[f"{name}_hi"] = intervals.weighted_rate(mine)
            if same:
                ref = ds.recovered.sel(variant=REFERENCE, init=init).isel(target=idx).values.astype(float)
                row.update(_difference(name, *intervals.paired_difference(mine, ref)))
    return row


def interval_columns(model_id: str, entry: dict, ev, attack: dict, rec, held_out: set[str]) -> dict:
    """Every interval column of one leaderboard row (see the module docstring), `interval_method` with them."""
    row = {}
    if ev is not None:
        row.update(eval_intervals(ev, entry))
    if model_id in attack:
        row.update(attack_intervals(attack[model_id], attack.get(REFERENCE), held_out))
    if rec is not None:
        row.update(recovery_intervals(rec, model_id))
    if row:
        row["interval_method"] = method_column()
    return row


def draw_intervals(ax, table, x: np.ndarray, y: np.ndarray) -> bool:
    """Error bars of `eval_copies` (y) on the leaderboard figure, from its `_lo` / `_hi` columns; whether any
    were drawn."""
    if "eval_copies_lo" not in table or "eval_copies_hi" not in table:
        return False
    lo, hi = (np.asarray(table[f"eval_copies_{e}"], dtype=float) for e in ("lo", "hi"))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return False
    ax.errorbar(x[ok], y[ok], yerr=[np.maximum(y[ok] - lo[ok], 0), np.maximum(hi[ok] - y[ok], 0)], fmt="none",
                ecolor="0.45", elinewidth=0.8, capsize=2.5, zorder=2)
    return True
