"""95% intervals of the attacks' summaries (`memprune.evaluate.intervals`), from their per-prompt (per-target)
outcomes: the extraction attack's table (attack/table.csv), the recovery table (recovery.csv, recovery.nc) and the
detection report's AUC (detection.nc)."""

from __future__ import annotations

import numpy as np

from memprune.evaluate import intervals

REFERENCE = "none"
ATTACK_RATES = ("identified", "actually_memorized", "copies_another")
RECOVERY_RATES = (("copy_rate_original", "copied_original"), ("mr_recovered", "recovered"))


def attack_table_intervals(table):
    """attack/table.csv with `<rate>_pct_lo` / `_hi` beside each `<rate>_pct` (Wilson over the row's prompts, in
    %, empty where the count is unknown) and the column `interval_method`."""
    import pandas as pd

    table = table.copy()
    for name in ATTACK_RATES:
        if name not in table:
            continue
        lo, hi = intervals.wilson(pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=float),
                                  table["prompts"].to_numpy(dtype=float))
        table[f"{name}_pct_lo"], table[f"{name}_pct_hi"] = np.round(100 * lo, 1), np.round(100 * hi, 1)
    table["interval_method"] = f"{intervals.wilson_method()}, over the row's prompts, in %"
    return table[intervals.next_to_values(list(table.columns))]


def _targets(ds, variant: str, group: str, split: str) -> np.ndarray:
    d = ds.sel(variant=variant)
    groups, splits = np.asarray(d.group.values).astype(str), np.asarray(d.split.values).astype(str)
    return np.flatnonzero((groups == group) & (splits == split))


def recovery_intervals(ds, rows: list[dict]) -> list[dict]:
    """The recovery table's rows (`recovery_report.summary`) with Wilson intervals of `copy_rate_original` and
    `mr_recovered` over the row's targets, `mr_recovered_minus_none` and its interval (paired with the unedited
    model on the same targets and seeds, where recovery attacked it), and `interval_method`; `ds` (recovery.nc)
    gets the method in its attributes."""
    variants = [str(v) for v in ds.variant.values]

    def prompt(v):
        values = ds.prompt.sel(variant=v).values if "variant" in ds.prompt.dims else ds.prompt.values
        return np.asarray(values).astype(str)

    out = []
    for r in rows:
        idx = _targets(ds, r["variant"], r["group"], r["split"])
        extra = {}
        for name, var in RECOVERY_RATES:
            mine = ds[var].sel(variant=r["variant"], init=r["init"]).isel(target=idx).values.astype(float)
            _, extra[f"{name}_lo"], extra[f"{name}_hi"] = intervals.weighted_rate(mine)
        if REFERENCE in variants and (prompt(r["variant"])[idx] == prompt(REFERENCE)[idx]).all():
            mine = ds.recovered.sel(variant=r["variant"], init=r["init"]).isel(target=idx).values.astype(float)
            ref = ds.recovered.sel(variant=REFERENCE, init=r["init"]).isel(target=idx).values.astype(float)
            est, lo, hi = intervals.paired_difference(mine, ref, over="targets")
            extra.update({"mr_recovered_minus_none": est, "mr_recovered_minus_none_lo": lo,
                          "mr_recovered_minus_none_hi": hi,
                          "mr_recovered_minus_none_excludes_zero": intervals.excludes_zero(lo, hi)})
        row = {**r, **extra, "interval_method": recovery_method()}
        out.append({k: row[k] for k in intervals.next_to_values(list(row))})
    ds.attrs.update({"interval_level": intervals.LEVEL, "interval_method": recovery_method()})
    return out


def recovery_method() -> str:
    return (f"95%: rates {intervals.wilson_method()} over the row's targets; _minus_none "
            f"{intervals.paired_method(over='targets')}")


def recovery_summary_variables(ds, rows: list[dict]):
    """recovery.nc with the table as variables along `summary_row` (coordinates `summary_variant`,
    `summary_group`, `summary_split`, `summary_init`; variables `summary_<column>`, intervals included)."""
    keys = ("variant", "group", "split", "init")
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in keys and c != "interval_method"]
    data = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        values = np.array([np.nan if v is None else float(v) for v in values])
        data[f"summary_{c}"] = ("summary_row", values, {"long_name": f"recovery table: {c}"})
    coords = {f"summary_{k}": ("summary_row", np.array([str(r[k]) for r in rows], dtype=object)) for k in keys}
    return ds.assign(data).assign_coords(coords)


def auc_intervals(ds):
    """detection.nc with `auc_lo` / `auc_hi` per comparison: positives and negatives resampled apart."""
    score, positive = ds.score.values, ds.is_positive.values.astype(bool)
    group = np.asarray(ds.group.values).astype(str)
    prefix = f"{ds.attrs['positive'].replace(',', '+')}_vs_"
    bounds = []
    for c in map(str, ds.comparison.values):
        neg = c[len(prefix):]
        negative = ~positive if neg == "all" else group == neg
        bounds.append(intervals.bootstrap_auc(score[positive], score[negative])[1:])
    lo, hi = np.array(bounds, dtype=float).reshape(-1, 2).T
    method = intervals.auc_method()
    ds = ds.assign(auc_lo=("comparison", lo,
                           {"long_name": "95% interval of auc: lower end", "interval_method": method}),
                   auc_hi=("comparison", hi,
                           {"long_name": "95% interval of auc: upper end", "interval_method": method}))
    ds.attrs["interval_method"] = method
    return ds
