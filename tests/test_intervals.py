"""The interval module: coverage on synthetic data with a known rate or mean (seeded, so deterministic), paired
differences, the pooled form of a mean over subsets, and the column order of the tables."""

import numpy as np
import pytest

from memprune.evaluate import intervals
from memprune.evaluate.eval_intervals import pooled


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_wilson_covers_the_true_rate_in_about_95_percent(p):
    """2000 binomial samples at n = 40: Wilson's 95% interval covers p in 93-97% of them (simulation SE 0.5%;
    its exact coverage, summed over the binomial, is printed beside)."""
    from scipy.stats import binom

    k = np.random.default_rng(0).binomial(40, p, size=2000)
    lo, hi = intervals.wilson(k, 40)
    coverage = float(np.mean((lo <= p) & (p <= hi)))
    lo_all, hi_all = intervals.wilson(np.arange(41), 40)
    exact = float(binom.pmf(np.arange(41), 40, p)[(lo_all <= p) & (p <= hi_all)].sum())
    print(f"Wilson n=40 p={p}: simulated coverage {coverage:.4f}, exact {exact:.4f}")
    assert 0.93 <= coverage <= 0.97 and 0.93 <= exact <= 0.97
    assert "Wilson" in intervals.wilson(k, 40).method


def test_wilson_edges():
    lo, hi = intervals.wilson(np.array([0, 40, 0]), np.array([40, 40, 0]))
    assert lo[0] == 0 and 0.05 < hi[0] < 0.1  # 0 of 40: not [0, 0]
    assert hi[1] == 1 and lo[1] < 1
    assert np.isnan(lo[2]) and np.isnan(hi[2])  # no prompts
    # equal weights: the plain Wilson interval
    share, wl, wh = intervals.weighted_rate([1, 0, 0, 1, 1], [2, 2, 2, 2, 2])
    assert share == 0.6 and (wl, wh) == pytest.approx(intervals.wilson(3, 5))


def test_bootstrap_mean_covers_the_true_mean_near_95_percent():
    """2000 normal samples of 50 prompts (one batch: each row its own bootstrap): the percentile bootstrap's 95%
    interval covers the mean in 95% +- 2.5% of them: 3 simulation SEs (0.5% each) and the percentile method's
    own shortfall at n = 50 (its sd uses 1/n and normal quantiles: expected coverage about 94.2%)."""
    samples = np.random.default_rng(0).normal(1.0, 2.0, size=(2000, 50))
    mean, lo, hi = intervals.bootstrap_mean(samples)
    coverage = float(np.mean((lo <= 1.0) & (1.0 <= hi)))
    print(f"bootstrap mean n=50: coverage {coverage:.4f}")
    assert abs(coverage - 0.95) <= 0.025
    one = intervals.bootstrap_mean(samples[0])  # a single row: the same method, its own draw of resamples
    assert one[0] == pytest.approx(mean[0]) and abs(one[1] - lo[0]) < 0.15 and abs(one[2] - hi[0]) < 0.15


def test_bootstrap_is_deterministic_and_weighted():
    x = np.random.default_rng(3).normal(size=30)
    assert intervals.bootstrap_mean(x) == intervals.bootstrap_mean(x)
    w = np.arange(1, 31)
    mean, lo, hi = intervals.bootstrap_mean(x, w)
    assert mean == pytest.approx(np.sum(w * x) / np.sum(w)) and lo < mean < hi
    assert "2000 resamples" in intervals.bootstrap_mean(x).method
    # NaN prompts are left out; fewer than 2 prompts: no interval
    assert intervals.bootstrap_mean(np.r_[x, np.nan])[1:] == intervals.bootstrap_mean(x)[1:]
    one = intervals.bootstrap_mean([0.5, np.nan])
    assert one[0] == 0.5 and np.isnan(one[1]) and np.isnan(one[2])


def test_paired_difference_of_a_model_with_itself_is_zero():
    a = np.random.default_rng(1).integers(0, 2, size=40).astype(float)
    diff = intervals.paired_difference(a, a)
    assert tuple(diff) == (0.0, 0.0, 0.0) and intervals.excludes_zero(*diff[1:]) is False
    assert "paired" in diff.method
    b = np.where(np.arange(40) < 30, 0.0, a)  # an edit that removes most copies
    est, lo, hi = intervals.paired_difference(b, a)
    assert est == pytest.approx(b.mean() - a.mean()) and hi < 0 and intervals.excludes_zero(lo, hi)


def test_paired_difference_is_narrower_than_unpaired_when_prompts_vary():
    """Prompts differ a lot, models by a little on each: pairing removes the prompt-to-prompt spread."""
    rng = np.random.default_rng(2)
    base = rng.normal(0, 3, size=60)
    edited = base - 0.5 + rng.normal(0, 0.2, size=60)
    _, lo, hi = intervals.paired_difference(edited, base)
    _, lo_a, hi_a = intervals.bootstrap_mean(edited)
    _, lo_b, hi_b = intervals.bootstrap_mean(base)
    assert hi < 0 and (hi - lo) < 0.5 * min(hi_a - lo_a, hi_b - lo_b)


def test_t_mean_and_auc():
    est, lo, hi = intervals.t_mean([0.5, 0.6, 0.7])
    assert est == pytest.approx(0.6) and (lo, hi) == pytest.approx((0.6 - 0.2484, 0.6 + 0.2484), abs=1e-3)
    assert np.isnan(intervals.t_mean([0.4])[1])
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 60), rng.normal(0, 1, 80)
    auc, lo, hi = intervals.bootstrap_auc(pos, neg)
    assert auc == pytest.approx((pos[:, None] > neg[None]).mean()) and lo < auc < hi
    assert intervals.bootstrap_auc([1, 2], [0, 0.5])[:1] == (1.0,)


def test_pooled_is_the_mean_over_subsets_of_each_subsets_mean():
    """A mean over subsets of per-subset means (each over its (prompt, seed) values), written as a weighted mean over
    prompts: the form whose bootstrap resamples prompts."""
    rng = np.random.default_rng(0)
    x = rng.random((3, 8, 2))
    x[0, :3] = np.nan  # subset 0's own prompts
    x[1, 3:5] = np.nan
    x[1, 6, 1] = np.nan  # a seed not generated
    x[2] = np.nan  # a subset without a model
    values, weights = pooled(x)
    expected = np.mean([np.nanmean(x[0]), np.nanmean(x[1])])
    assert np.sum(values * weights) / np.sum(weights) == pytest.approx(expected) and len(values) == 8


def test_interval_columns_sit_next_to_their_value():
    cols = ["model", "a", "b", "a_hi", "interval_method", "a_lo", "b_minus_none_hi", "b_minus_none", "b_lo",
            "b_minus_none_lo", "b_minus_none_excludes_zero"]
    assert intervals.next_to_values(cols) == ["model", "a", "a_lo", "a_hi", "b", "b_lo", "b_minus_none",
                                              "b_minus_none_lo", "b_minus_none_hi", "b_minus_none_excludes_zero",
                                              "interval_method"]


def test_frechet_reference_bootstrap_recomputes_the_distance_on_resampled_prompts():
    """Each replicate is metrics.frechet_distance on the drawn prompts (the eigenvalue form equals scipy's sqrtm,
    with fewer images than features too); the draws are seeded; resampling inflates the distance, and the
    bias-corrected interval covers the value and narrows with more prompts."""
    from memprune.evaluate.metrics import FrechetReference, frechet_distance

    rng = np.random.default_rng(1)
    feats, ref = rng.normal(0.3, 1.0, (40, 2, 6)), rng.normal(0.0, 1.0, (200, 6))
    reps = FrechetReference(ref).bootstrap(feats, 50, seed=7)
    draws = np.random.default_rng(7).integers(0, 40, size=(50, 40))
    for r in (0, 13, 49):
        assert reps[r] == pytest.approx(frechet_distance(feats[draws[r]].reshape(-1, 6), ref), rel=1e-8)
    wide = rng.normal(0.0, 1.0, (3, 2, 10))  # 6 images of 10 features: the n x n form
    one = FrechetReference(ref[:, :5].repeat(2, axis=1)).bootstrap(wide, 5, seed=0)
    first = np.random.default_rng(0).integers(0, 3, size=(5, 3))[0]
    assert one[0] == pytest.approx(frechet_distance(wide[first].reshape(-1, 10), ref[:, :5].repeat(2, axis=1)),
                                   rel=1e-6, abs=1e-9)
    np.testing.assert_array_equal(reps, FrechetReference(ref).bootstrap(feats, 50, seed=7))
    value = frechet_distance(feats.reshape(-1, 6), ref)
    reps = FrechetReference(ref).bootstrap(feats, 400, seed=0)
    assert reps.mean() > value  # resampling repeats prompts: the distance grows
    lo, hi = intervals.percentile(reps, estimate=value)  # less the bootstrap's bias: around the value
    assert lo < value < hi and (lo, hi) == pytest.approx(tuple(np.quantile(reps - reps.mean() + value, [.025, .975])))
    more = rng.normal(0.3, 1.0, (400, 2, 6))
    lo4, hi4 = intervals.percentile(FrechetReference(ref).bootstrap(more, 400, seed=0))
    assert hi4 - lo4 < (hi - lo) / 2
    assert intervals.percentile([np.nan, 1.0]) == (pytest.approx(np.nan, nan_ok=True),) * 2
