import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from memprune.analysis import random_like_packed
from memprune.overlap import density, iou, mean_over_pairs, pairwise_iou


def pack(m):
    return np.packbits(np.asarray(m, dtype=bool), axis=-1)


def test_density_and_iou_on_known_masks():
    a = pack([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    b = pack([[0, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    assert density(a, 10) == 0.2
    assert iou(a, b) == 1 / 3
    assert iou(a, a) == 1.0
    empty = pack([[0] * 10])
    assert iou(empty, empty) == 1.0 and iou(a, empty) == 0.0


def test_mean_over_pairs_leaves_out_the_diagonal():
    m = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert np.isclose(mean_over_pairs(m), 0.4)


def test_random_like_keeps_counts_per_leading_index():
    rng = np.random.default_rng(0)
    m = pack(rng.random((3, 5, 20)) < 0.3)
    r = random_like_packed(m, 20, rng)
    assert np.array_equal(np.bitwise_count(r).sum(axis=(1, 2)), np.bitwise_count(m).sum(axis=(1, 2)))
    # padding bits of the last byte stay clear
    assert not np.unpackbits(r, axis=-1)[..., 20:].any()


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, (4, 3, 2, 13)))
def test_pairwise_iou_symmetric_and_one_on_identical(masks):
    packed = [pack(m) for m in masks]
    mat = pairwise_iou(packed)
    assert np.allclose(mat, np.swapaxes(mat, 0, 1))
    assert np.all(mat[np.arange(4), np.arange(4)] == 1.0)
    assert np.all((mat >= 0) & (mat <= 1))
    assert np.allclose(pairwise_iou([packed[0], packed[0]])[0, 1], 1.0)
