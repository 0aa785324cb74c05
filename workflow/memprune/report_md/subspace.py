"""Section 1, does the memorization subspace exist: per config, the mean pairwise IOU of each localizer's masks
(memorized vs control collections vs random masks, iou.nc) and their density (density.nc); on a planted testbed,
each localizer's precision and recall against the planted units (localization.nc); what the testbed memorizes
(report.nc)."""

from __future__ import annotations

import numpy as np

from memprune.report_md import cells
from memprune.report_md.sources import Stamp, Target

TITLE = "Does the memorization subspace exist?"
INTRO = ("Mean pairwise IOU: the intersection over union of the masks two subsets of a collection give, averaged "
         "over the pairs of subsets, the layers and the denoising steps; memorized collections beside the control "
         "(non-memorized) ones, and random masks of the same density (the chance level). Density: the share of a "
         "layer's weights in a mask, averaged over subsets, layers and steps, per step and for the mask an edit "
         "applies (the union over the first steps).")


def _open(path):
    import xarray as xr

    return xr.load_dataset(path, engine="h5netcdf")


def _collections(ds) -> list[tuple[str, bool]]:
    return [(str(c), bool(k)) for c, k in zip(ds.collection.values, ds.control.values)]


def _name(collection: str, control: bool) -> str:
    return f"{collection} ({'control' if control else 'memorized'})"


def iou_table(ds) -> list[str]:
    cols = _collections(ds)
    header = ["localizer", *(h for c, k in cols for h in (_name(c, k), f"{c}: random"))]
    rows = []
    for loc in map(str, ds.localizer.values):
        row = [loc]
        for c, _ in cols:
            for kind in ("found", "random"):
                row.append(cells.overlap(ds.mean_iou.sel(localizer=loc, collection=c, mask_type=kind).mean()))
        rows.append(row)
    return cells.table(header, rows)


def density_table(ds) -> list[str]:
    cols = _collections(ds)
    header = ["localizer", *(h for c, k in cols for h in (f"{_name(c, k)}: per step", f"{c}: applied"))]
    rows = []
    for loc in map(str, ds.localizer.values):
        row = [loc]
        for c, _ in cols:
            sel = dict(localizer=loc, collection=c)
            row += [cells.percent(ds.density.sel(**sel).mean()), cells.percent(ds.density_union.sel(**sel).mean())]
        rows.append(row)
    return cells.table(header, rows)


def localization_table(ds, controls: dict[str, bool]) -> list[str]:
    """Per localizer and collection (`controls`: which are controls), precision and recall with their intervals."""
    rows = []
    for loc in map(str, ds.localizer.values):
        for c in map(str, ds.collection.values):
            sel = ds.sel(localizer=loc, collection=c)
            values = {n: float(sel[n]) for n in ("precision_mean", "precision_mean_lo", "precision_mean_hi",
                                                  "recall_mean", "recall_mean_lo", "recall_mean_hi") if n in sel}
            if not cells.finite(values.get("precision_mean")) and not cells.finite(values.get("recall_mean")):
                continue
            name = _name(c, controls[c]) if c in controls else c
            rows.append([loc, name, cells.row_rate(values, "precision_mean"), cells.row_rate(values, "recall_mean")])
    rows.append(["a random mask", "", cells.rate(float(ds.random_precision)), ""])
    return cells.table(["localizer", "collection", "precision", "recall"], rows)


def _copied(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Per prompt (prompt, seed): 1 where most seeds reach the threshold, as the testbed report counts copies."""
    from memprune.evaluate.metrics import copied_in_most_seeds

    return copied_in_most_seeds(similarity, threshold).astype(float)


def report_table(ds, added: str | None) -> list[str]:
    """Per guidance scale: copy rates of each kind of prompt (Wilson over prompts) and prompt following (bootstrap
    over prompts), from the report's per-prompt SSIMs (a held-out generation counts when it is closer to a photo
    than to its scene's render, as the report counts it)."""
    from memprune.evaluate.intervals import bootstrap_mean, weighted_rate

    threshold = float(ds.attrs.get("copy_threshold", 0.4))
    group = np.asarray(ds.group.values).astype(str)
    kinds = [("duplicated", "ssim_own", "duplicated prompts copied")]
    if (group == "added").any():
        kinds.append(("added", "ssim_own", f"{added or 'added'} prompts copied"))
    kinds += [("single", "ssim_nearest", "single-seen: copy a training photo"),
              ("heldout", "held", "held-out scenes: copy a training photo")]
    header = ["guidance", *(k[2] for k in kinds), "prompt following (held-out scenes)"]
    rows = []
    for g in ds.guidance.values:
        d = ds.sel(guidance=g)
        row = [f"{float(g):g}"]
        for kind, var, _ in kinds:
            if var == "held":
                near, render = d.ssim_nearest.values, d.ssim_render.values
                sim = np.where(near > render, near, 0.0)
            else:
                sim = d[var].values
            row.append(cells.rate(*weighted_rate(_copied(sim[group == kind], threshold))))
        follows = d.follows_prompt.values[group == "heldout"].astype(float)
        row.append(cells.rate(*bootstrap_mean(np.nanmean(follows, axis=-1))))
        rows.append(row)
    return cells.table(header, rows)


def section(targets: list[Target], stamp: Stamp) -> list[str]:
    lines = [f"## 1. {TITLE}", "", INTRO, ""]
    for t in targets:
        lines += [f"### {t.name} ({t.label})", ""]
        if t.has("iou.nc") and t.has("density.nc"):
            lines += [stamp(t, ["iou.nc"]), "", *iou_table(_open(t.path("iou.nc"))), ""]
            lines += [stamp(t, ["density.nc"]), "", *density_table(_open(t.path("density.nc"))), ""]
        else:
            lines += [t.missing("iou.nc", "IOU and density"), ""]
        derived = t.plan.derived or {}
        controls = {c.name: c.control for c in t.plan.collections.values()}
        if derived.get("kind") == "planted":
            if t.has("localization.nc"):
                lines += [stamp(t, ["localization.nc"], "precision and recall against the planted units, mean over "
                                                         "the collection's subsets (Student t interval)"), "",
                          *localization_table(_open(t.path("localization.nc")), controls), ""]
            else:
                lines += [t.missing("localization.nc", "Precision and recall against the planted units"), ""]
        if t.plan.is_testbed:
            if t.has("report.nc"):
                ds = _open(t.path("report.nc"))
                note = (f"a prompt copies when SSIM >= {float(ds.attrs.get('copy_threshold', 0.4)):g} in most of its "
                        f"{ds.sizes['seed']} seeds, {ds.attrs.get('steps', '?')} steps")
                added = (derived.get("added") or {}).get("group")
                lines += [stamp(t, ["report.nc"], note), "", *report_table(ds, added), ""]
            else:
                lines += [t.missing("report.nc", "What the testbed memorizes"), ""]
    return lines
