"""Scores of a localizer against a known answer (the planted testbed): how much of a mask lies on the
planted units, and how many planted units it finds. Pure functions: masks and the ground truth in, numbers out.

Weight level (per ff.net.2 layer, pooled over layers):
  precision = |mask & planted columns| / |mask|          recall = |mask & planted columns| / |planted columns|
Unit level (INJ's recall@k, Chang et al. NAACL 2024): units (input features of ff.net.2, every layer pooled)
ranked by the share of their column the mask holds (ties broken by `scores`, then by position); recall@k = the
share of planted units among the top k% of all units. A random mask of the same density has precision
r = |planted units| / |units| and recall@k ~ k / 100 (for k% <= 100): printed beside every figure.
"""

from __future__ import annotations

import numpy as np


def weight_precision_recall(masks: dict[str, np.ndarray], planted: dict[str, np.ndarray]) -> tuple[float, float]:
    """masks: {layer: bool (out, in)}; planted: {layer: int array of planted input features}."""
    hit = total = planted_total = 0
    for layer, mask in masks.items():
        cols = np.zeros(mask.shape[1], dtype=bool)
        cols[np.asarray(planted.get(layer, []), dtype=int)] = True
        hit += int(mask[:, cols].sum())
        total += int(mask.sum())
        planted_total += int(cols.sum()) * mask.shape[0]
    return (hit / total if total else float("nan")), (hit / planted_total if planted_total else float("nan"))


def unit_ranking(masks: dict[str, np.ndarray], scores: dict[str, np.ndarray] | None = None) -> list[tuple[str, int]]:
    """Every (layer, unit), best first: by the share of the unit's column in the mask, then by `scores[layer]`
    ((in,) e.g. the column's summed Wanda score; higher first), then by layer order and index."""
    keys = []
    for li, (layer, mask) in enumerate(masks.items()):
        share = mask.mean(axis=0)
        tie = np.zeros(mask.shape[1]) if scores is None else np.asarray(scores[layer], dtype=float)
        for j in range(mask.shape[1]):
            keys.append((-share[j], -tie[j], li, j, layer))
    keys.sort()
    return [(layer, j) for *_, j, layer in keys]


def recall_at(masks: dict[str, np.ndarray], planted: dict[str, np.ndarray], percents: list[float],
              scores: dict[str, np.ndarray] | None = None) -> dict[float, float]:
    """{k: share of planted units among the top k% of units}."""
    ranking = unit_ranking(masks, scores)
    planted_set = {(layer, int(j)) for layer, units in planted.items() for j in units}
    out = {}
    for k in percents:
        top = ranking[: int(round(len(ranking) * k / 100))]
        out[k] = sum(1 for u in top if u in planted_set) / len(planted_set) if planted_set else float("nan")
    return out


def random_baseline(planted: dict[str, np.ndarray], in_features: dict[str, int], percents: list[float]) -> dict:
    """What a random mask of any density scores: precision = the planted share of units, recall@k = k / 100."""
    r = sum(len(u) for u in planted.values()) / sum(in_features.values())
    return {"precision": r, **{f"recall@{k}": min(1.0, k / 100) for k in percents}}


def full_mask(kind: str, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A `masks.MaskSet` layer mask of any kind as a bool (out, in) weight mask."""
    mask = np.asarray(mask, dtype=bool)
    if kind == "weight":
        return mask
    if kind == "rows":
        return np.repeat(mask[:, None], shape[1], axis=1)
    return np.repeat(mask[None, :], shape[0], axis=0)  # columns


def localization_dataset(stores: dict[str, dict[str, list[str]]], truth: dict, in_features: dict[str, int],
                         percents_of_r: tuple[float, ...] = (1, 2, 5)):
    """localization.nc: per (localizer, collection, subset) the weight-level precision and recall of the subset's
    union mask against the planted units of `truth` (planted.json), and recall@k for k = m x r (`percents_of_r`),
    beside what a random mask scores (`random_*`). `stores`: {localizer: {collection: [mask store paths]}}.
    A localizer whose masks lie on none of the FFN layers (NeMo's value channels) holds no planted unit:
    precision and recall 0, density the share of its own layers' channels it masks."""
    import xarray as xr

    from memprune.formats.masks import read_mask_set

    planted = {layer: np.asarray(v, dtype=int) for layer, v in truth["layers"].items()}
    r = 100 * float(truth["fraction"])
    percents = [m * r for m in percents_of_r]
    locs = list(stores)
    cols = list(dict.fromkeys(c for by in stores.values() for c in by))
    n_sub = max((len(p) for by in stores.values() for p in by.values()), default=0)
    shape = (len(locs), len(cols), n_sub)
    prec, rec, dens = (np.full(shape, np.nan) for _ in range(3))
    at = np.full(shape + (len(percents),), np.nan)
    for li, loc in enumerate(locs):
        for ci, col in enumerate(cols):
            for si, path in enumerate(stores[loc].get(col, [])):
                ms = read_mask_set(path)
                if not set(ms.layers) & set(in_features):  # a localizer of other layers (NeMo: attn2.to_v)
                    n_set = sum(ms.n_set().values())
                    prec[li, ci, si], rec[li, ci, si] = (0.0 if n_set else np.nan), 0.0
                    at[li, ci, si] = 0.0
                    dens[li, ci, si] = n_set / sum(ms.grid[l][1] for l in ms.layers)
                    continue
                masks = {l: full_mask(m.kind, m.mask, ms.grid[l]) for l, m in ms.layer_masks().items()}
                prec[li, ci, si], rec[li, ci, si] = weight_precision_recall(masks, planted)
                ranked = recall_at({l: m for l, m in masks.items() if l in in_features}, planted, percents)
                at[li, ci, si] = [ranked[k] for k in percents]
                dens[li, ci, si] = sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
    base = random_baseline(planted, in_features, percents)
    k_labels = [f"{m:g}r" for m in percents_of_r]
    ds = xr.Dataset(
        {
            "precision": (("localizer", "collection", "subset"), prec,
                          {"long_name": "share of the mask's entries on planted columns"}),
            "recall": (("localizer", "collection", "subset"), rec,
                       {"long_name": "share of the planted columns' weights in the mask"}),
            "density": (("localizer", "collection", "subset"), dens, {"long_name": "share of weights masked"}),
            "recall_at": (("localizer", "collection", "subset", "k"), at,
                          {"long_name": "share of planted units among the top k% of units (INJ's recall@k)"}),
            "random_precision": ((), base["precision"], {"long_name": "precision of a random mask (planted share)"}),
            "random_recall_at": (("k",), [base[f"recall@{k}"] for k in percents],
                                 {"long_name": "recall@k of a random ranking (k / 100)"}),
        },
        coords={"localizer": locs, "collection": cols, "subset": np.arange(n_sub), "k": k_labels,
                "k_percent": ("k", percents)},
        attrs={"fraction": float(truth["fraction"]), "planted_units": int(sum(len(v) for v in planted.values())),
               "units": int(sum(in_features.values()))},
    )
    return with_subset_intervals(ds)


SUBSET_MEANS = ("precision", "recall", "recall_at")


def with_subset_intervals(ds):
    """localization.nc with `<score>_mean` over each collection's subsets (each subset a random draw of prompts, its
    masks found anew) and its 95% interval `<score>_mean_lo` / `_hi` (Student t over the subsets: the spread the
    choice of prompts makes; NaN with fewer than 2 subsets), for precision, recall and recall@k."""
    from memprune.evaluate.intervals import LEVEL, t_mean, t_method

    for name in SUBSET_MEANS:
        x = np.moveaxis(ds[name].values, 2, -1)  # (localizer, collection, [k,] subset)
        got = np.array([t_mean(row) for row in x.reshape(-1, x.shape[-1])]).reshape(*x.shape[:-1], 3)
        dims = tuple(d for d in ds[name].dims if d != "subset")
        what = ds[name].attrs.get("long_name", name)
        ds[f"{name}_mean"] = (dims, got[..., 0], {"long_name": f"{what}: mean over the collection's subsets"})
        for i, end in ((1, "lo"), (2, "hi")):
            ds[f"{name}_mean_{end}"] = (dims, got[..., i],
                                        {"long_name": f"95% interval of {name}_mean: "
                                                      f"{'lower' if end == 'lo' else 'upper'} end",
                                                           "interval_method": t_method()})
    ds.attrs.update({"interval_level": LEVEL, "interval_method": t_method()})
    return ds
