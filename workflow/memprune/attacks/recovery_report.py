"""The recovery attack's table and figure (`memprune recovery-table`): the variants' files merged along `variant`
(recovery.nc), DoRI's table per (variant, group, split, init) (recovery.csv), examples (figures/recovery.png).

`split` says which targets a row counts: for an edited model, "subset" (the photos of the prompts whose masks made
the edit, what it was made to remove) and "heldout" (photos of the same kind outside that subset, or of another
kind); for a model without an edit (the unedited model, an inference-time mitigation), "all".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memprune.attacks.table_intervals import recovery_intervals, recovery_summary_variables


def summary(paths: list[Path]):
    """recovery.nc: the variants' files along `variant`, and per (variant, group, split, init) the copy rate of the
    start (original prompt) and MR after recovery, mean SSIM of both."""
    import xarray as xr

    parts = [xr.load_dataset(p) for p in paths]
    for part in parts:  # files written before the split was recorded count every target as "all"
        if "split" not in part:
            part["split"] = ("target", np.array(["all"] * part.sizes["target"], dtype=object))
    ds = xr.concat(parts, dim="variant", join="outer").assign_coords(variant=[p.attrs["variant"] for p in parts])
    groups = list(dict.fromkeys(str(g) for g in parts[0]["group"].values))
    rows = []
    for v, part in zip(ds.variant.values, parts):
        d = ds.sel(variant=v)
        group, split = np.asarray(part.group.values).astype(str), np.asarray(part.split.values).astype(str)
        for g in groups:
            for sp in dict.fromkeys(split[group == g]):
                sel = d.isel(target=np.flatnonzero((group == g) & (split == sp)))
                for init in ds.init.values:
                    s = sel.sel(init=init)
                    rows.append({"variant": str(v), "group": g, "split": sp, "init": str(init),
                                 "targets": int(s.sizes["target"]),
                                 "copy_rate_original": float(s.copied_original.mean()),
                                 "mr_recovered": float(s.recovered.mean()),
                                 "ssim_original": float(s.ssim_original.mean()),
                                 "ssim_recovered": float(s.ssim_recovered.mean()),
                                 "seconds_per_target": float(s.seconds.mean())})
    rows = recovery_intervals(ds, rows)
    return recovery_summary_variables(ds, rows), rows


def recovery_figure(ds, path) -> None:
    """Per variant (rows): for the first two targets of each group, the target, the generation from the
    original prompt and from the recovered embedding (init = prompt), with their median SSIM to the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memprune.formats.store import atomic_file

    init = "prompt" if "prompt" in ds.init.values else str(ds.init.values[0])
    picks = []
    for g in dict.fromkeys(str(x) for x in np.ravel(ds.group.values)):
        idx = [i for i, x in enumerate(np.ravel(ds.group.values)[: ds.sizes["target"]]) if str(x) == g][:2]
        picks += idx
    variants = [str(v) for v in ds.variant.values]
    fig, axes = plt.subplots(len(variants), 3 * len(picks), figsize=(1.1 * 3 * len(picks), 1.4 * len(variants)),
                             squeeze=False)
    groups = np.ravel(ds.group.values)[: ds.sizes["target"]]
    for r, v in enumerate(variants):
        for c, t in enumerate(picks):
            target = ds.target_image.isel(target=t)
            ax = axes[r, 3 * c]
            ax.imshow((target.isel(variant=0) if "variant" in target.dims else target).values.astype(np.uint8))
            ax.set_title(f"{groups[t]}", fontsize=6)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(v, fontsize=6)
            for k, which in enumerate(("original", "recovered")):
                ax = axes[r, 3 * c + 1 + k]
                ax.imshow(ds.examples.sel(variant=v, init=init, which=which).isel(target=t).values.astype(np.uint8))
                ax.set_xticks([]), ax.set_yticks([])
                s = float(ds[f"ssim_{which}"].sel(variant=v, init=init).isel(target=t).median())
                ax.set_title(f"{which[:4]} {s:.2f}", fontsize=6)
    fig.suptitle("recovery attack: original prompt vs recovered embedding (median SSIM to the target)", fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


