"""Confidence intervals for the outputs' rates, means and differences (95% unless asked otherwise). Pure
functions: per-prompt values in, (estimate,) lo, hi out, each result a tuple whose `.method` says how it was made
(stored in the outputs' attributes).

* `wilson`: a proportion of prompts (copy rate, MR, ...): Wilson's score interval, vectorised. A weighted share
  (a mean over subsets of each subset's rate) uses Kish's effective number of prompts, (sum w)^2 / sum w^2, as n:
  with equal weights the plain Wilson interval.
* `bootstrap_mean`: a mean over prompts of per-prompt values (each prompt's seeds averaged first, so a prompt
  travels with all its seeds: a cluster bootstrap): percentile bootstrap over prompts, `RESAMPLES` resamples from
  a generator seeded with `SEED` (the same data give the same interval).
* `paired_difference`: a difference between two models on the same prompts and seeds: the same bootstrap of the
  per-prompt differences, so both models see the same resampled prompts; a model against itself gives [0, 0].
  Also the paired interval of two proportions on the same prompts (0/1 per prompt).
* `t_mean`: a mean over a few independent replicates (the subsets of a collection): Student's t interval.
* `bootstrap_auc`: ROC AUC, positives and negatives resampled apart (stratified percentile bootstrap).
* `percentile`: an interval from bootstrap replicates computed elsewhere (the Frechet distance's,
  `metrics.FrechetReference.bootstrap`: the statistic is not a mean, so each resample recomputes it).

The module imports only numpy at load (the planner imports localizers, which call it inside functions).
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
FRECHET_RESAMPLES = 500  # each one a matrix square root (2048 x 2048 with Inception features on Stable Diffusion)
SEED = 0


class Interval(tuple):
    """(lo, hi) or (estimate, lo, hi): a tuple with `.method`, the short description stored in attributes."""

    method: str

    def __new__(cls, values, method: str):
        obj = super().__new__(cls, values)
        obj.method = method
        return obj


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


def wilson_method(level: float = LEVEL) -> str:
    return f"Wilson score interval, {_pct(level)} (a weighted share: at Kish's effective n)"


def bootstrap_method(level: float = LEVEL, over: str = "prompts") -> str:
    return (f"percentile bootstrap over {over} (each with all its seeds), {RESAMPLES} resamples, seed {SEED}, "
            f"{_pct(level)}")


def paired_method(level: float = LEVEL, over: str = "prompts") -> str:
    return (f"paired percentile bootstrap of per-{over[:-1]} differences (the same resampled {over} and seeds for "
            f"both models), {RESAMPLES} resamples, seed {SEED}, {_pct(level)}")


def frechet_method(level: float = LEVEL) -> str:
    return (f"bias-corrected percentile bootstrap over the non-memorized prompts (each with all its seeds; the "
            f"reference features fixed): the distance recomputed per resample, less the replicates' mean minus the "
            f"value, {FRECHET_RESAMPLES} resamples, seed {SEED}, {_pct(level)}; a mean over several models: the mean "
            f"of their replicates (the same resampled prompts)")


def percentile(replicates, estimate: float | None = None, level: float = LEVEL) -> tuple[float, float]:
    """(lo, hi): the percentile interval of bootstrap replicates (NaN ones left out; NaN with fewer than 2). With
    `estimate`, of the replicates less the bootstrap's estimate of the bias (their mean minus `estimate`), so a
    statistic that resampling inflates (the Frechet distance) is not placed beside a value it excludes."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if r.size < 2:
        return np.nan, np.nan
    if estimate is not None:
        r = r - (r.mean() - estimate)
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def t_method(level: float = LEVEL, over: str = "subsets") -> str:
    return f"Student t interval of the mean over {over}, {_pct(level)}"


def auc_method(level: float = LEVEL) -> str:
    return (f"stratified percentile bootstrap over prompts (positives and negatives resampled apart), {RESAMPLES} "
            f"resamples, seed {SEED}, {_pct(level)}")


def wilson(successes, n, level: float = LEVEL) -> Interval:
    """Wilson's score interval of successes / n, elementwise (arrays broadcast; float counts allowed, as for an
    effective n); NaN where n is 0 or NaN. Returns Interval((lo, hi))."""
    from scipy.stats import norm

    k, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    z = norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        ok = n > 0
        # at 0 (n) successes the end is exactly 0 (1), not a rounding of it
        lo = np.where(ok, np.where(k <= 0, 0.0, np.clip(centre - half, 0.0, 1.0)), np.nan)
        hi = np.where(ok, np.where(k >= n, 1.0, np.clip(centre + half, 0.0, 1.0)), np.nan)
    if lo.ndim == 0:
        lo, hi = float(lo), float(hi)
    return Interval((lo, hi), wilson_method(level))


def _clean(values, weights) -> tuple[np.ndarray, np.ndarray]:
    """The prompts with a value and a positive weight."""
    x = np.asarray(values, dtype=float).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float).ravel()
    keep = np.isfinite(x) & np.isfinite(w) & (w > 0)
    return x[keep], w[keep]


def weighted_rate(values, weights=None, level: float = LEVEL) -> Interval:
    """(share, lo, hi) of per-prompt values in [0, 1] (0/1: copied or not) with `weights` (default equal): the
    weighted share and Wilson's interval at Kish's effective n; NaN without prompts."""
    x, w = _clean(values, weights)
    if not len(x):
        return Interval((np.nan, np.nan, np.nan), wilson_method(level))
    share = float(np.sum(w * x) / np.sum(w))
    n_eff = float(np.sum(w) ** 2 / np.sum(w * w))
    lo, hi = wilson(share * n_eff, n_eff, level)
    return Interval((share, lo, hi), wilson_method(level))


def _weighted_mean(x, w, axis=-1):
    return np.sum(x * w, axis=axis) / np.sum(w, axis=axis)


def _bootstrap_rows(x: np.ndarray, weights, level: float, method: str) -> Interval:
    """bootstrap_mean of each row of a NaN-free batch x (..., prompt): arrays (mean, lo, hi) of shape (...)."""
    from scipy.stats import bootstrap

    w = np.broadcast_to(np.ones(1) if weights is None else np.asarray(weights, dtype=float), x.shape)
    if not (np.isfinite(x).all() and np.isfinite(w).all()) or x.shape[-1] < 2:
        raise ValueError("bootstrap_mean: a batch needs rows of at least 2 values, none NaN")
    batch = max(1, 4_000_000 // x.size)  # resamples per vectorised call: about 4M values in memory
    res = bootstrap((x, w), _weighted_mean, n_resamples=RESAMPLES, batch=batch, paired=True, vectorized=True,
                    axis=-1, confidence_level=level, method="percentile", rng=np.random.default_rng(SEED))
    ci = res.confidence_interval
    return Interval((_weighted_mean(x, w), ci.low, ci.high), method)


def bootstrap_mean(values, weights=None, level: float = LEVEL, over: str = "prompts") -> Interval:
    """(mean, lo, hi) of per-prompt values (prompt,) weighted by `weights` (default equal; e.g. the prompt's
    number of seeds, so that the mean is that over images): percentile bootstrap over prompts (scipy), NaN
    prompts left out; lo and hi NaN with fewer than 2 prompts. A batch of NaN-free rows (..., prompt) gives
    arrays (...), one interval per row (all rows in one vectorised call)."""
    from scipy.stats import bootstrap

    method = bootstrap_method(level, over)
    if np.ndim(values) > 1:
        return _bootstrap_rows(np.asarray(values, dtype=float), weights, level, method)
    x, w = _clean(values, weights)
    if not len(x):
        return Interval((np.nan, np.nan, np.nan), method)
    mean = float(_weighted_mean(x, w))
    if len(x) < 2:
        return Interval((mean, np.nan, np.nan), method)
    if np.all(x == x[0]):  # every resample gives the same mean (scipy would warn about degenerate data)
        return Interval((mean, mean, mean), method)
    res = bootstrap((x, w), _weighted_mean, n_resamples=RESAMPLES, paired=True, vectorized=True,
                    confidence_level=level, method="percentile", rng=np.random.default_rng(SEED))
    ci = res.confidence_interval
    return Interval((mean, float(ci.low), float(ci.high)), method)


def paired_difference(a, b, weights=None, level: float = LEVEL, over: str = "prompts") -> Interval:
    """(mean of a - b, lo, hi) for two models' per-prompt values a, b (prompt,) on the same prompts and seeds
    (prompts where either is NaN left out): the bootstrap of the per-prompt differences, so both models are
    resampled together."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    est, lo, hi = bootstrap_mean(d, weights, level, over)
    return Interval((est, lo, hi), paired_method(level, over))


def excludes_zero(lo: float, hi: float) -> bool | None:
    """Whether [lo, hi] lies wholly on one side of 0 (None when the interval is unknown)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return bool(lo > 0 or hi < 0)


def t_mean(values, level: float = LEVEL, over: str = "subsets") -> Interval:
    """(mean, lo, hi) of a few independent replicates (NaN left out): Student's t interval; lo, hi NaN with
    fewer than 2 values."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    method = t_method(level, over)
    if not len(x):
        return Interval((np.nan, np.nan, np.nan), method)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval((mean, np.nan, np.nan), method)
    half = float(t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Interval((mean, mean - half, mean + half), method)


def _auc(pos, neg, axis=-1):
    """ROC AUC from ranks (Mann-Whitney U / (n_pos n_neg), ties counting one half), vectorised over leading axes."""
    from scipy.stats import rankdata

    pos, neg = np.moveaxis(pos, axis, -1), np.moveaxis(neg, axis, -1)
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    shape = np.broadcast_shapes(pos.shape[:-1], neg.shape[:-1])
    both = np.concatenate([np.broadcast_to(pos, shape + (n_pos,)), np.broadcast_to(neg, shape + (n_neg,))], axis=-1)
    ranks = rankdata(both, axis=-1)[..., :n_pos].sum(-1)
    return (ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auc(positive, negative, level: float = LEVEL) -> Interval:
    """(AUC, lo, hi) of scores of positives against negatives: positives and negatives resampled apart; lo, hi NaN
    with fewer than 2 of either."""
    from scipy.stats import bootstrap

    pos, neg = (np.asarray(v, dtype=float).ravel() for v in (positive, negative))
    method = auc_method(level)
    if not len(pos) or not len(neg):
        return Interval((np.nan, np.nan, np.nan), method)
    auc = float(_auc(pos, neg))
    if len(pos) < 2 or len(neg) < 2:
        return Interval((auc, np.nan, np.nan), method)
    res = bootstrap((pos, neg), _auc, n_resamples=RESAMPLES, vectorized=True, confidence_level=level,
                    method="percentile", rng=np.random.default_rng(SEED))
    ci = res.confidence_interval
    return Interval((auc, float(ci.low), float(ci.high)), method)


def next_to_values(columns: list[str], suffixes=("_lo", "_hi", "_minus_none", "_minus_none_lo", "_minus_none_hi",
                                                    "_minus_none_excludes_zero")) -> list[str]:
    """Column order with each `<name><suffix>` right after `<name>` (in `suffixes`' order) and `interval_method`
    last; other columns keep their places."""
    last = [c for c in columns if c == "interval_method"]
    columns = [c for c in columns if c != "interval_method"]
    present = set(columns)
    attached = {c + s for c in columns for s in suffixes if c + s in present}
    out = []
    for c in columns:
        if c in out or c in attached:  # placed, or placed by the column it belongs to
            continue
        out.append(c)
        out += [c + s for s in suffixes if c + s in present and c + s not in out]
    return out + [c for c in columns if c not in out] + last
