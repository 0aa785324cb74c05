"""Scores of a localizer against a known answer (the planted testbed, issue 15): how much of a mask lies on the
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
