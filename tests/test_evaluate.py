"""Evaluation: the fair split, ground truth, copy rates, and an end-to-end evaluation DAG on a tiny model."""

import csv

import numpy as np
import pytest
import xarray as xr

from conftest import REPO, snakemake, write_config
from memprune.evaluate import GroundTruth, copy_rate, fair_split, subset_prompts_from_json
from memprune.prompts import InputError

MEM = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:10]
NON = (REPO / "resources/prompts/testbed/heldout.txt").read_text().splitlines()[:3]


def test_fair_split_excludes_only_the_subsets_own_prompts():
    prompts = ["a", "b", "c", "d", "x"]
    split = fair_split(prompts, {"m/0": ["a", "b"], "m/1": ["b", "d"]})
    assert split.tolist() == [[False, False, True, True, True], [True, False, True, False, True]]


def test_fair_split_no_subsets():
    assert fair_split(["a"], {}).shape == (0, 1)


def test_subset_prompts_from_json(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("p0\np1\np2\np3\n")
    got = subset_prompts_from_json({"c/0": {"file": str(f), "indices": [3, 1]}, "c/1": {"file": str(f), "indices": [0]}})
    assert got == {"c/0": ["p3", "p1"], "c/1": ["p0"]}


def test_copy_rate_majority_of_seeds_and_nan_prompts_skipped():
    sim = np.array([[0.9, 0.9, 0.1], [0.9, 0.1, 0.1], [np.nan, np.nan, np.nan], [0.5, 0.5, 0.5]])
    assert copy_rate(sim, 0.5) == pytest.approx(2 / 3)
    assert np.isnan(copy_rate(np.full((2, 3), np.nan), 0.5))


def test_ground_truth_directory_layout_and_clear_error(tmp_path):
    from PIL import Image

    prompts = tmp_path / "mem.txt"
    prompts.write_text("first\nsecond\n")
    (tmp_path / "gt" / "1").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "gt" / "1" / "a.png")
    gt = GroundTruth(None, tmp_path / "gt", prompts)
    assert gt.images("second").shape == (1, 8, 8, 3)
    with pytest.raises(InputError, match=r"memorized prompt 0 .*gt/0/\*\.png"):
        gt.images("first")


def test_clip_trained_on_other_testbed_data_is_refused(tmp_path):
    import json

    from memprune.testbed import DatasetSpec, check_trained_on, dataset_digest, generate_dataset

    data = generate_dataset(DatasetSpec(seed=1, n_duplicated=2, duplication=2, n_single=2, renders_per_scene=1),
                            tmp_path / "data").parent
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "memprune_clip.json").write_text(json.dumps({"dataset_sha256": dataset_digest(data)}))
    check_trained_on(clip, data, "memprune_clip.json")  # the same data: accepted
    (clip / "memprune_clip.json").write_text(json.dumps({"dataset_sha256": "0" * 64}))
    with pytest.raises(InputError, match=r"clip: trained on another testbed dataset .*memprune_clip\.json"):
        check_trained_on(clip, data, "memprune_clip.json")


def _write_ground_truth(root, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        (root / str(i)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / str(i) / "train.png")


@pytest.fixture(scope="module")
def eval_run(tiny_model, tmp_path_factory):
    from memprune.clip_testbed import ClipSpec, save_untrained_clip

    wd = tmp_path_factory.mktemp("eval")
    clip = save_untrained_clip(wd / "clip", ClipSpec(vision_width=32, vision_layers=1, text_width=32, text_layers=1))
    _write_ground_truth(wd / "gt", len(MEM))
    (wd / "non.txt").write_text("".join(p + "\n" for p in NON))
    evaluate = {"collections": ["m5"], "seeds": [0, 1], "nonmemorized": str(wd / "non.txt"),
                "ground_truth": str(wd / "gt"), "fid_reference": "unedited", "copy_threshold": 0.4,
                "clip": {"weights": str(clip)}}
    write_config(wd, tiny_model, {"mem": MEM}, {"m5": {"set": "mem", "n_subsets": 2, "size": 5, "seed": 0}},
                 evaluate=evaluate, activations={"chunk_size": 10})
    snakemake(wd, "results/tiny/eval.nc")
    return wd


def test_end_to_end_evaluation(eval_run):
    wd = eval_run
    ds = xr.open_dataset(wd / "results/tiny/eval.nc", engine="h5netcdf")
    assert dict(ds.copy_similarity.sizes) == {"variant": 3, "subset": 2, "prompt": len(MEM) + len(NON), "seed": 2}
    assert list(ds.variant.values) == ["none", "pruned", "wen"]
    assert list(ds.subset.values) == ["m5/0", "m5/1"]
    # fair split: each subset's 5 prompts are out of its test set, for every variant alike
    assert ds.in_test.sum("prompt").values.tolist() == [len(MEM) - 5 + len(NON)] * 2
    excluded = ~ds.in_test.values
    assert np.isnan(ds.copy_similarity.values[:, excluded]).all()
    mem = ds.group.values == "memorized"
    tested = ds.in_test.values & mem[None]
    assert np.isfinite(ds.copy_similarity.values[:, tested]).all()
    assert np.isfinite(ds.clip_score.values[:, ds.in_test.values]).all()
    assert (ds.frechet_distance.sel(variant="none").values == pytest.approx(0.0, abs=1e-6))  # unedited reference
    assert np.isfinite(ds.frechet_distance.values).all()
    assert (ds.seconds_per_image.values > 0).all()
    # the unedited and Wen baselines do not depend on the subset, except for what the split masks
    none = ds.copy_similarity.sel(variant="none").values
    both = ds.in_test.values.all(axis=0)
    assert np.allclose(none[0][both], none[1][both], equal_nan=True)
    rows = list(csv.DictReader(open(wd / "results/tiny/eval_summary.csv")))
    assert [(r["variant"], r["subset"]) for r in rows][:3] == [("none", "all"), ("pruned", "mean"), ("wen", "all")]
    assert len(rows) == 5 and "copy_rate_vs_none" in rows[0]
    for fig in ("eval_copy_vs_clip", "eval_fid_time", "eval_grid"):
        assert (wd / f"results/tiny/figures/{fig}.png").stat().st_size > 1000
    timing = (wd / "results/tiny/eval/steps6_g3.0/samples/wen/timing.json").read_text()
    assert "wen_mean_iterations" in timing


def test_second_run_does_nothing(eval_run):
    proc = snakemake(eval_run, "-n", "results/tiny/eval.nc")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_one_sampling_job_per_variant_and_subset_cap(eval_run, tiny_model, tmp_path):
    from test_workflow import planned_jobs

    write_config(tmp_path, tiny_model, {"mem": MEM}, {"m5": {"set": "mem", "n_subsets": 2, "size": 5, "seed": 0}},
                 evaluate={"collections": ["m5"], "max_subsets": 1, "ground_truth": str(tmp_path)})
    jobs = planned_jobs(snakemake(tmp_path, "-n", "results/tiny/eval.nc"))
    assert jobs["eval_sample_pruned"] == 1 and jobs["eval_sample_baseline"] == 2 and jobs["eval_score"] == 3
    assert jobs["eval_aggregate"] == 1
