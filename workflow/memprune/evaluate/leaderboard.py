"""The leaderboard (`memprune leaderboard`, `memprune leaderboard-stack`): one row per compared model of a config
(the unedited model, each localizer's edit, each mitigation), saying what it removes, at what cost, and whether it
stays removed, from the files the other stages wrote:

* copies, per kind of memorized prompt (the extraction attack's groups, `attack/<model>.nc`): `copies_<kind>`, the
  share of the kind's prompts whose attack clique is the prompt's own training image ("actually memorized"), and
  `copies_another_<kind>`, the share whose clique is another training image. An edited model counts the prompts
  outside the subset its edit was made from (held out); a model without an edit counts every prompt of the kind.
* `eval_copies` (`eval.nc`): the evaluation's copy rate on held-out memorized prompts of `evaluate.memorized`
  (`eval_kind`), and `fraction_over_<t>` where `evaluate.report_thresholds` asks for it.
* stays removed (`recovery.nc`): `mr_prompt_<group>` and `mr_random_<group>`, the recovery attack's MR from the
  prompt and from random starts, on the same targets for every model (the edit's subset and held-out photos
  together; controls are groups too: a control recovered is a false recovery).
* what it costs generation (`eval.nc`): `prompt_following_vs_none` and `frechet_vs_none`, ratios to the unedited
  model on the same test prompts (Frechet: the unedited model's own distance is 0 where the reference is its own
  generations; the ratio is then NaN and `frechet_distance` says the value).
* where it is: `precision` and `recall` of the edit's masks against the planted units (`localization.nc`, a
  planted testbed's localizers).
* cost: `locate_seconds_per_prompt`, the seconds the edit took (masks and prune: their Snakemake benchmarks, as in
  eval.nc `mask_seconds`; adversarial fine-tuning: its training job) per prompt it was made from; 0 for the
  unedited model and inference-time mitigations; from `timing.nc` (`memprune.evaluate.timing`: every model in
  one process, rounds interleaved, so the load is the same for all), `seconds_per_image`, generation seconds per
  image (Wen's optimisation included), `overhead_seconds_per_image`, that minus the unedited model's, and
  `time_per_image_vs_none`, their ratio (medians over rounds). Evaluation's own per-job times (eval.nc) are not
  used: its jobs run at different loads.

* uncertainty (`memprune.evaluate.leaderboard_intervals`): `<rate>_lo` / `<rate>_hi` (95%) beside each rate, and
  `<rate>_minus_none` with its interval and `_minus_none_excludes_zero` (a paired comparison with the unedited model
  on the same prompts and seeds) for `eval_copies`, `copies_<kind>` and `mr_<init>_<group>`; `interval_method`.

A column is NaN where its stage does not cover the model (e.g. a second subset evaluated but not attacked).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from memprune.errors import InputError
from memprune.evaluate.intervals import next_to_values
from memprune.evaluate.leaderboard_intervals import draw_intervals, interval_columns
from memprune.evaluate.copies import COPY_KEYS, same_metric

if TYPE_CHECKING:  # imported where used: importing this module stays light
    import pandas as pd

log = logging.getLogger(__name__)

REFERENCE = "none"


def read_models(text: str) -> dict:
    """The leaderboard's models JSON (the text, or a file holding it), {model id: entry}, the unedited model in it."""
    from memprune.evaluate.prompts import models_object

    models, source = models_object(text)
    if REFERENCE not in models:
        raise InputError(f"models JSON ({source}): expected an object of model ids holding {REFERENCE!r}")
    return models


def _mean(values) -> float:
    a = np.asarray(values, dtype=float)
    return float(np.nanmean(a)) if a.size and not np.isnan(a).all() else np.nan


def _ratio(a: float, b: float) -> float:
    return a / b if np.isfinite(a) and np.isfinite(b) and abs(b) > 1e-12 else np.nan


def _benchmark_seconds(path: str) -> float:
    """A Snakemake benchmark file's seconds, read as eval.nc's mask_seconds reads them; NaN when it is missing."""
    from memprune.evaluate.aggregate import benchmark_seconds

    seconds, missing = benchmark_seconds([(path, 1.0)])
    return np.nan if missing else seconds


def eval_columns(ds, model_id: str, entry: dict) -> dict:
    """The evaluation's columns of one model: a pruned model's cell (its variant, its subset), ratios to the
    unedited model on that subset's test set; a model without an edit: means over the subsets' test sets."""
    variant = entry["variant"] if entry.get("method") is None else f"{entry['variant']}:{entry['method']}"
    if variant not in [str(v) for v in ds.variant.values]:
        return {}
    subset = entry.get("subset")
    if subset is not None and subset not in [str(s) for s in ds.subset.values]:
        return {}

    def value(name: str, v: str) -> float:
        x = ds[name].sel(variant=v)
        return float(x.sel(subset=subset)) if subset is not None else _mean(x.values)

    if subset is not None and not np.isfinite(value("copy_rate", variant)):
        return {}  # this method has no model of this subset
    row = {"eval_copies": value("copy_rate", variant)}
    if "fraction_over" in ds:
        for t in ds.threshold.values:
            frac = ds.fraction_over.sel(threshold=t, variant=variant)
            row[f"fraction_over_{float(t):g}"] = (float(frac.sel(subset=subset)) if subset is not None
                                                  else _mean(frac.values))
    for name in ("prompt_following", "frechet_distance"):
        row[name] = value(name, variant)
    row["prompt_following_vs_none"] = _ratio(row["prompt_following"], value("prompt_following", REFERENCE))
    row["frechet_vs_none"] = _ratio(row["frechet_distance"], value("frechet_distance", REFERENCE))
    if entry.get("method") is not None:
        row["edit_seconds"] = value("mask_seconds", variant)
    return row


TIME_COLUMNS = ("seconds_per_image", "overhead_seconds_per_image", "time_per_image_vs_none")


def timing_columns(ds, model_id: str) -> dict:
    """The time columns of one model from timing.nc (NaN-free: every compared model is timed)."""
    if model_id not in [str(m) for m in ds.model.values]:
        return {}
    return {name: float(ds[name].sel(model=model_id)) for name in TIME_COLUMNS}


def attack_columns(path: str, held_out: set[str]) -> dict:
    """Per kind (the attack's prompt groups): the share of its prompts, less `held_out`'s complement (the edit's
    own subset), actually memorized and copying another training image."""
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        prompts = [str(p) for p in ds.prompt.values]
        groups = [str(g) for g in ds.group.values]
        actual = ds.actually_memorized.values.astype(float)
        other = ds.copies_another.values.astype(float) if "copies_another" in ds else np.full(len(prompts), np.nan)
    row = {}
    for g in dict.fromkeys(groups):
        sel = np.array([gr == g and p not in held_out for p, gr in zip(prompts, groups)])
        row[f"copies_{g}"] = _mean(actual[sel]) if sel.any() else np.nan
        row[f"copies_another_{g}"] = _mean(other[sel]) if sel.any() else np.nan
        row[f"attack_prompts_{g}"] = int(sel.sum())
    return row


def recovery_columns(ds, model_id: str) -> dict:
    """MR from each start per target group (every split together: the same targets for every model)."""
    if model_id not in [str(v) for v in ds.variant.values]:
        return {}
    d = ds.sel(variant=model_id)
    groups = np.asarray(ds.group.values).astype(str)
    groups = groups if groups.ndim == 1 else groups[0]
    row = {}
    for g in dict.fromkeys(groups):
        idx = np.flatnonzero(groups == g)
        for init in ds.init.values:
            row[f"mr_{init}_{g}"] = _mean(d.recovered.sel(init=init).isel(target=idx).values)
    return row


def localization_columns(ds, entry: dict) -> dict:
    method, subset = entry.get("method"), entry.get("subset")
    if method is None or method not in [str(v) for v in ds.localizer.values]:
        return {}
    collection, i = subset.rsplit("/", 1)
    if collection not in [str(c) for c in ds.collection.values]:
        return {}
    cell = ds.sel(localizer=method, collection=collection, subset=int(i))
    return {"precision": float(cell.precision), "recall": float(cell.recall)}


def subset_prompts(entry: dict) -> set[str]:
    """The prompts an edit was made from: `subset_prompts`, or lines `indices` of `prompts_file`."""
    if entry.get("subset_prompts") is not None:
        return set(entry["subset_prompts"])
    if entry.get("prompts_file"):
        from memprune.formats.prompts import read_prompts

        prompts = read_prompts(Path(entry["prompts_file"]))
        return {prompts[i] for i in entry.get("indices") or []}
    return set()


COLUMNS_FIRST = ("model", "variant", "localizer", "subset", "eval_kind")


def copy_columns(ev, rec, attack_files: list[str]) -> dict:
    """The copy metric every stage of the row decided copies with (they must agree on the similarity and its
    checkpoint; a stage may set its own threshold): the evaluation's threshold, else the first stage's."""
    import xarray as xr

    attrs = [ds.attrs for ds in (ev, rec) if ds is not None]
    for path in attack_files:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            attrs.append(dict(ds.attrs))
    if not attrs:
        return {}
    same_metric(attrs, "leaderboard: its stages", keys=("copy_metric", "copy_checkpoint"))
    first = attrs[0]
    return {"copy_metric": str(first.get("copy_metric", "ssim")),
            "copy_checkpoint": str(first.get("copy_checkpoint", "")),
            "copy_threshold": float(first.get("copy_threshold", np.nan))}


def leaderboard(models: dict, eval_nc: str | None = None, attack: dict[str, str] | None = None,
                recovery_nc: str | None = None, localization_nc: str | None = None, eval_kind: str | None = None,
                timing_nc: str | None = None):
    """The leaderboard of `models` {id: {variant, method, subset, prompts_file + indices (or subset_prompts),
    edit_prompts, edit_benchmark}}
    (ids as evaluation, the attack and recovery name them) from the stages' files; a pandas DataFrame."""
    import pandas as pd
    import xarray as xr

    attack = attack or {}
    ev = xr.load_dataset(eval_nc, engine="h5netcdf") if eval_nc else None
    rec = xr.load_dataset(recovery_nc, engine="h5netcdf") if recovery_nc else None
    loc = xr.load_dataset(localization_nc, engine="h5netcdf") if localization_nc else None
    timing = xr.load_dataset(timing_nc, engine="h5netcdf") if timing_nc else None
    copy = copy_columns(ev, rec, list(attack.values()))
    rows = []
    for model_id, entry in models.items():
        row = {"model": model_id, "variant": entry["variant"], "localizer": entry.get("method") or "",
               "subset": entry.get("subset") or "", "eval_kind": eval_kind or "", **copy}
        if ev is not None:
            row.update(eval_columns(ev, model_id, entry))
        if model_id in attack:
            row.update(attack_columns(attack[model_id], subset_prompts(entry)))
        if rec is not None:
            row.update(recovery_columns(rec, model_id))
        if loc is not None:
            row.update(localization_columns(loc, entry))
        if timing is not None:
            row.update(timing_columns(timing, model_id))
        row.update(interval_columns(model_id, entry, ev, attack, rec, subset_prompts(entry)))
        if entry.get("method") is None:  # no edit to make, or a trained one (its job's benchmark)
            bench = entry.get("edit_benchmark")
            row["edit_seconds"] = _benchmark_seconds(bench) if bench else 0.0
        n = entry.get("edit_prompts") or 0
        row["locate_seconds_per_prompt"] = (row.get("edit_seconds", np.nan) / n if n
                                            else (0.0 if row.get("edit_seconds") == 0 else np.nan))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table[next_to_values([*COLUMNS_FIRST, *[c for c in table.columns if c not in COLUMNS_FIRST]])]


def _point_label(row) -> str:
    """A model's short name on the figure: the localizer and subset of an edit, else the variant."""
    if row.get("variant") == "pruned" and isinstance(row.get("localizer"), str):
        return f"{row['localizer']} {row['subset']}" if isinstance(row.get("subset"), str) else row["localizer"]
    return str(row.get("variant") or row["model"])


def _spans(xs, ys) -> tuple[float, float]:
    """The ranges of x and y, each at least 1e-9: the units in which the figure's label rules compare distances."""
    return max(float(np.ptp(xs)), 1e-9), max(float(np.ptp(ys)), 1e-9)


def _near(a: tuple[float, float], b: tuple[float, float], spans: tuple[float, float], near: float) -> bool:
    """Whether points a and b (x, y) lie within `near` of each other in both axes, as fractions of `spans`."""
    return abs(a[0] - b[0]) / spans[0] <= near and abs(a[1] - b[1]) / spans[1] <= near


def _label_groups(points: list[tuple[float, float, int]], near: float = 0.05) -> list[tuple[float, float, list[int]]]:
    """Points (x, y, number) within `near` of each other's axis ranges, grouped greedily in number order: one label
    (its numbers, at its first point) per group, so that labels of nearby points do not print over each other."""
    if not points:
        return []
    spans = _spans([p[0] for p in points], [p[1] for p in points])
    groups: list[tuple[float, float, list[int]]] = []
    for xi, yi, i in points:
        for gx, gy, ids in groups:
            if _near((xi, yi), (gx, gy), spans, near):
                ids.append(i)
                break
        else:
            groups.append((xi, yi, [i]))
    return groups


def _alternate_offsets(groups: list[tuple[float, float, list[int]]], near: float = 0.12) -> list[bool]:
    """Per label group: whether its label goes below its point. Groups whose points lie within `near` of the axis
    ranges of each other alternate above and below, in order of x, so that neighbours' labels do not touch."""
    if not groups:
        return []
    xs, ys = np.array([g[0] for g in groups]), np.array([g[1] for g in groups])
    spans = _spans(xs, ys)
    below = [False] * len(groups)
    previous = None
    for i in np.argsort(xs, kind="stable"):
        if previous is not None and _near((xs[i], ys[i]), (xs[previous], ys[previous]), spans, near):
            below[i] = not below[previous]
        previous = i
    return below


def leaderboard_figure(table, path) -> None:
    """Copies of the evaluated kind against prompt following (ratio to the unedited model), one numbered point per
    model (the key beside the plot names them), coloured by MR from the prompt after the recovery attack (the first
    recovered group); models recovery did not attack are hollow; bars: the 95% interval of the copies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memprune.formats.store import atomic_file

    mr = [c for c in table.columns if c.startswith("mr_prompt_")]
    missing = np.full(len(table), np.nan)  # a column no stage wrote
    fig = plt.figure(figsize=(9.0, 4.8))
    ax = fig.add_axes((0.08, 0.11, 0.50, 0.80))
    cax = fig.add_axes((0.60, 0.11, 0.015, 0.80))
    x = np.asarray(table.get("prompt_following_vs_none", missing), dtype=float)
    y = np.asarray(table.get("eval_copies", missing), dtype=float)
    c = np.asarray(table[mr[0]] if mr else missing, dtype=float)
    attacked = np.isfinite(c)
    sc = ax.scatter(x[attacked], y[attacked], c=c[attacked], cmap="viridis", vmin=0, vmax=1, s=45, edgecolors="k",
                    zorder=3)
    ax.scatter(x[~attacked], y[~attacked], facecolors="none", edgecolors="k", s=45, zorder=3)
    bars = draw_intervals(ax, table, x, y)
    key, points = [], []
    for i, (xi, yi, (_, row)) in enumerate(zip(x, y, table.iterrows()), start=1):
        plotted = bool(np.isfinite(xi) and np.isfinite(yi))
        if plotted:
            points.append((xi, yi, i))
        key.append(f"{i:>2}  {_point_label(row)}" + ("" if plotted else "  (not evaluated)"))
    groups = _label_groups(points)
    for (xi, yi, ids), below in zip(groups, _alternate_offsets(groups)):
        ax.annotate(",".join(map(str, ids)), (xi, yi), fontsize=7, xytext=(4, -10 if below else 3),
                    textcoords="offset points")
    ax.set_xlabel("prompt following / unedited model")
    kind = str(table["eval_kind"].iloc[0]) if len(table) else ""
    ax.set_ylabel(f"copies of held-out {kind} prompts (evaluation)".replace("  ", " "))
    ax.margins(x=0.1, y=0.1)
    ax.set_title("what each model removes, at what cost, and whether it stays removed", fontsize=9)
    fig.colorbar(sc, cax=cax, label=f"MR from the prompt ({mr[0][len('mr_prompt_'):]})" if mr else "MR (not run)")
    if bars:
        key += ["", "bars: 95% interval of the copies"]
    if (~attacked).any():
        key += ["", "hollow: recovery not run"]
    fig.text(0.72, 0.91, "\n".join(key), fontsize=7, va="top", family="monospace")
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_table(table, path) -> None:
    from memprune.formats.store import atomic_file

    with atomic_file(Path(path)) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")


def stack(paths: list[str], out: str) -> "pd.DataFrame":
    """results/leaderboard.csv: the per-model leaderboards one under the other, a first column `testbed` (the
    model's name: its results/<name>/ folder); columns a testbed lacks are empty."""
    import pandas as pd

    parts = []
    for p in paths:
        try:
            part = pd.read_csv(p)
        except (OSError, ValueError) as e:
            raise InputError(f"leaderboard-stack: {p}: {e}") from None
        if "model" not in part:
            raise InputError(f"leaderboard-stack: {p} is not a leaderboard (no 'model' column)")
        part.insert(0, "testbed", Path(p).parent.name)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True, sort=False)
    if any(k in table for k in COPY_KEYS):  # rows scored with different copy metrics do not stack
        # older rows: unknown
        known = [row for row in table.to_dict("records") if isinstance(row.get("copy_metric"), str)]
        same_metric(known, f"leaderboard-stack: {', '.join(paths)}")
    write_table(table, out)
    return table
