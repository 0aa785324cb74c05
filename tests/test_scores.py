"""The mask rule (equations 4-7) on hand-made matrices where the answer is known, plus properties."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from memprune.localize.wanda_scores import (
    k_per_row,
    memorized_mask,
    top_k_per_row,
    union_over_timesteps,
    wanda_score,
)


def test_wanda_score_is_abs_weight_times_column_norm():
    w = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    norm = torch.tensor([2.0, 10.0])
    assert torch.equal(wanda_score(w, norm), torch.tensor([[2.0, 20.0], [6.0, 5.0]]))


def test_top_k_picks_largest_per_row():
    s = torch.tensor([[1.0, 5.0, 3.0, 4.0], [9.0, 0.0, 8.0, 1.0]])
    assert top_k_per_row(s, 2).tolist() == [[False, True, False, True], [True, False, True, False]]


def test_top_k_ties_lower_index_wins():
    s = torch.tensor([[2.0, 2.0, 2.0, 1.0], [3.0, 1.0, 1.0, 1.0]])
    assert top_k_per_row(s, 2).tolist() == [[True, True, False, False], [True, True, False, False]]
    assert top_k_per_row(s, 2).sum(dim=1).tolist() == [2, 2]


def test_top_k_edge_counts():
    s = torch.rand(3, 5)
    assert top_k_per_row(s, 0).sum() == 0
    assert top_k_per_row(s, 5).all()


@pytest.mark.parametrize("sparsity,width,k",
                         [(0.01, 1280, 12), (0.01, 5120, 51), (0.01, 2560, 25), (0.01, 99, 0), (0.5, 5, 2)])
def test_sparsity_rounds_down_like_wanda(sparsity, width, k):
    assert k_per_row(sparsity, width) == k


def test_mask_keeps_only_where_memorized_beats_null():
    w = torch.ones(2, 4)
    mem = torch.tensor([4.0, 1.0, 9.0, 16.0])  # sums of squares -> norms 2, 1, 3, 4
    null = torch.tensor([1.0, 0.0, 9.0, 1.0])  # x 2 prompts -> norms 1.41, 0, 4.24, 1.41
    mask = memorized_mask(w, mem, null, n_prompts=2, sparsity=0.5)  # k = 2: columns 3 and 2 by score
    # column 2 is in the top-2 but its null score (4.24) beats the memorized one (3): dropped
    assert mask.tolist() == [[False, False, False, True]] * 2


def test_row_where_nothing_beats_null_is_empty():
    w = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    mem = torch.tensor([1.0, 1.0, 1.0])
    null = torch.tensor([5.0, 5.0, 5.0])
    assert memorized_mask(w, mem, null, n_prompts=1, sparsity=0.67).sum() == 0
    # zero weights score 0 under both prompts: never memorized (strict >)
    assert memorized_mask(w, mem * 100, null * 0, 1, 0.67)[1].sum() == 0


def test_null_is_scaled_by_number_of_prompts():
    w = torch.ones(1, 2)
    mem = torch.tensor([3.0, 3.0])  # norm sqrt(3)
    null = torch.tensor([1.0, 1.0])
    assert memorized_mask(w, mem, null, n_prompts=2, sparsity=1.0).all()  # sqrt(3) > sqrt(2)
    assert not memorized_mask(w, mem, null, n_prompts=4, sparsity=1.0).any()  # sqrt(3) < sqrt(4)


def test_union_over_first_tau_steps():
    m = torch.zeros(4, 1, 3, dtype=torch.bool)
    m[0, 0, 0] = m[2, 0, 1] = m[3, 0, 2] = True
    assert union_over_timesteps(m, 1).tolist() == [[True, False, False]]
    assert union_over_timesteps(m, 3).tolist() == [[True, True, False]]


finite = st.floats(min_value=0.0, max_value=1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    w=arrays(np.float32, (4, 12), elements=st.floats(-10, 10, width=32)),
    mem=arrays(np.float32, (3, 12), elements=finite),
    null=arrays(np.float32, (3, 12), elements=finite),
    n=st.integers(1, 8),
    sparsity=st.floats(0.01, 1.0),
)
def test_mask_properties(w, mem, null, n, sparsity):
    w, mem, null = map(torch.from_numpy, (w, mem, null))
    masks = torch.stack([memorized_mask(w, mem[t], null[t], n, sparsity) for t in range(3)])
    # density <= sparsity: at most k per row
    assert (masks.sum(dim=2) <= k_per_row(sparsity, 12)).all()
    # only where the memorized score beats the null score
    for t in range(3):
        beats_null = wanda_score(w, mem[t].sqrt()) > wanda_score(w, (n * null[t]).sqrt())
        assert not (masks[t] & ~beats_null).any()
    # the union grows with tau
    unions = [union_over_timesteps(masks, tau) for tau in (1, 2, 3)]
    assert not (unions[0] & ~unions[1]).any() and not (unions[1] & ~unions[2]).any()


@settings(max_examples=80, deadline=None)
@given(
    w=arrays(np.float32, (6, 40), elements=st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, 3.5, -0.25])),
    mem=arrays(np.float32, (3, 40), elements=st.sampled_from([0.0, 1.0, 4.0, 9.0, 2.5, 100.0])),
    null=arrays(np.float32, (3, 40), elements=st.sampled_from([0.0, 1.0, 4.0, 0.5])),
    n=st.integers(1, 5),
    sparsity=st.sampled_from([0.025, 0.05, 0.1, 0.3, 1.0]),
)
def test_fast_masks_equal_the_readable_rule(w, mem, null, n, sparsity):
    """Ties everywhere (few distinct values): the column-pruned path must still agree exactly."""
    from memprune.localize.wanda_packed import memorized_masks_over_time

    w, mem, null = map(torch.from_numpy, (w, mem, null))
    fast = memorized_masks_over_time(w, mem, null, n, sparsity)
    slow = torch.stack([memorized_mask(w, mem[t], null[t], n, sparsity) for t in range(3)])
    assert torch.equal(fast, slow)


def test_fast_masks_equal_on_heavy_tailed_data():
    from memprune.localize.wanda_packed import memorized_masks_over_time

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 509, generator=g)  # 509: the packed rows end in a partial byte
    mem = 10 * torch.exp(torch.randn(4, 509, generator=g)) ** 2
    null = torch.exp(torch.randn(4, 509, generator=g)) ** 2
    fast = memorized_masks_over_time(w, mem, null, 10, 0.02)
    slow = torch.stack([memorized_mask(w, mem[t], null[t], 10, 0.02) for t in range(4)])
    assert torch.equal(fast, slow) and fast.sum() > 0


def test_packed_union_equals_the_boolean_union():
    from memprune.localize.wanda_packed import memorized_masks_packed, union_over_timesteps_packed

    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 203, generator=g)
    mem = torch.exp(torch.randn(5, 203, generator=g))
    null = torch.exp(torch.randn(5, 203, generator=g)) * 0.5
    packed = memorized_masks_packed(w, mem, null, 3, 0.05)
    masks = torch.from_numpy(np.unpackbits(packed, axis=-1, count=203).astype(bool))
    for tau in (1, 3, 5):
        union = np.unpackbits(union_over_timesteps_packed(packed, tau), axis=-1, count=203).astype(bool)
        assert np.array_equal(union, union_over_timesteps(masks, tau).numpy())


def test_packed_masks_into_a_given_buffer():
    from memprune.localize.wanda_packed import memorized_masks_packed

    g = torch.Generator().manual_seed(2)
    w = torch.randn(12, 64, generator=g)
    mem = torch.exp(torch.randn(3, 64, generator=g))
    null = torch.exp(torch.randn(3, 64, generator=g)) * 0.5
    expected = memorized_masks_packed(w, mem, null, 3, 0.1)
    buffer = np.full((3, 12, 8), 0xFF, dtype=np.uint8)  # stale contents are overwritten
    assert memorized_masks_packed(w, mem, null, 3, 0.1, buffer=buffer) is buffer
    assert np.array_equal(buffer, expected)
    with pytest.raises(ValueError, match="buffer"):
        memorized_masks_packed(w, mem, null, 3, 0.1, buffer=np.zeros((3, 12, 7), dtype=np.uint8))
