"""Localization scores against a known answer, on hand-made masks."""

import numpy as np
import pytest

from memprune.localize.known_answer import random_baseline, recall_at, unit_ranking, weight_precision_recall


def test_precision_recall_of_hand_made_masks():
    planted = {"a": np.array([1]), "b": np.array([0, 2])}
    mask_a = np.zeros((2, 4), bool)
    mask_a[:, 1] = True  # the planted column, whole
    mask_a[0, 3] = True  # one entry off it
    mask_b = np.zeros((3, 3), bool)
    mask_b[0, 0] = True  # one of the 6 planted entries of b
    p, r = weight_precision_recall({"a": mask_a, "b": mask_b}, planted)
    assert p == pytest.approx(3 / 4) and r == pytest.approx(3 / (2 + 6))
    assert np.isnan(weight_precision_recall({"a": np.zeros((2, 4), bool)}, planted)[0])


def test_recall_at_k_ranks_units_by_their_share_then_score():
    planted = {"a": np.array([2]), "b": np.array([0])}
    mask_a = np.zeros((4, 4), bool)
    mask_a[:, 2] = True  # planted unit a/2: whole column
    mask_b = np.zeros((4, 4), bool)
    mask_b[:2, 3] = True  # b/3 half its column (not planted)
    mask_b[:1, 0] = True  # planted b/0: a quarter
    ranking = unit_ranking({"a": mask_a, "b": mask_b})
    assert ranking[:3] == [("a", 2), ("b", 3), ("b", 0)]
    got = recall_at({"a": mask_a, "b": mask_b}, planted, [12.5, 25.0])  # top 1 and top 2 of 8 units
    assert got == {12.5: 0.5, 25.0: 0.5}
    assert recall_at({"a": mask_a, "b": mask_b}, planted, [37.5])[37.5] == 1.0
    # ties in share are broken by the given scores
    tie = {"a": np.zeros((4, 4), bool), "b": np.zeros((4, 4), bool)}
    assert unit_ranking(tie, {"a": np.array([0, 0, 5, 0.0]), "b": np.zeros(4)})[0] == ("a", 2)


def test_random_baseline():
    base = random_baseline({"a": np.array([1, 2])}, {"a": 10, "b": 10}, [5, 10])
    assert base == {"precision": 0.1, "recall@5": 0.05, "recall@10": 0.1}


def test_localization_dataset_scores_stored_masks(tmp_path):
    from memprune.localize.known_answer import localization_dataset
    from memprune.formats.masks import MaskSet, write_mask_set
    from memprune.localize import pack

    planted = {"a": [1], "b": [0, 2]}
    truth = {"layers": planted, "fraction": 0.25}

    def store(name, masks):
        ms = MaskSet(layers=list(masks), kinds={l: "weight" for l in masks},
                     grid={l: m.shape for l, m in masks.items()},
                     union={l: pack(m) for l, m in masks.items()})
        write_mask_set(ms, tmp_path / f"{name}.zarr")
        return str(tmp_path / f"{name}.zarr")

    exact = {"a": np.zeros((2, 4), bool), "b": np.zeros((3, 3), bool)}
    exact["a"][:, 1] = True
    exact["b"][:, [0, 2]] = True
    off = {"a": np.zeros((2, 4), bool), "b": np.zeros((3, 3), bool)}
    off["a"][:, 3] = True
    ds = localization_dataset({"oracle": {"c": [store("e0", exact), store("e1", exact)]},
                               "other": {"c": [store("o", off)]}},
                              truth, {"a": 4, "b": 3}).sel(collection="c")
    assert ds.precision.sel(localizer="oracle").values.tolist() == [1.0, 1.0]
    assert ds.recall.sel(localizer="oracle").values.tolist() == [1.0, 1.0]
    assert ds.precision.sel(localizer="other", subset=0) == 0
    assert np.isnan(ds.precision.sel(localizer="other", subset=1))
    assert ds.recall_at.sel(localizer="oracle", subset=0, k="5r") == 1.0  # 5 x 25% = every unit
    assert float(ds.random_precision) == pytest.approx(3 / 7)
    assert list(ds.k.values) == ["1r", "2r", "5r"] and ds.k_percent.values.tolist() == [25, 50, 125]
    # means over the collection's subsets with a Student t interval: two exact subsets, no spread; one subset, none
    assert ds.precision_mean.sel(localizer="oracle") == 1.0
    assert (ds.precision_mean_lo.sel(localizer="oracle"), ds.precision_mean_hi.sel(localizer="oracle")) == (1.0, 1.0)
    assert ds.recall_at_mean.dims == ("localizer", "k") and ds.recall_at_mean_lo.sel(localizer="oracle", k="5r") == 1.0
    assert ds.precision_mean.sel(localizer="other") == 0 and np.isnan(ds.precision_mean_lo.sel(localizer="other"))
    assert "Student t" in ds.attrs["interval_method"] and "Student t" in ds.recall_mean_hi.attrs["interval_method"]
