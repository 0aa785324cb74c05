"""Evaluation: the fair split, ground truth, copy rates, a variant registered from outside sampled through the
command line, the aggregation's variant x subset layout, and an end-to-end evaluation DAG on a tiny model."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import REPO, snakemake, write_config
from memprune.evaluate.training_images import TrainingImages
from memprune.evaluate.prompts import fair_split, read_models, subset_prompts
from memprune.evaluate.metrics import copy_rate
from memprune.errors import InputError

MEM = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:10]
NON = (REPO / "resources/prompts/testbed/heldout.txt").read_text().splitlines()[:3]


def test_fair_split_excludes_only_the_subsets_own_prompts():
    prompts = ["a", "b", "c", "d", "x"]
    split = fair_split(prompts, {"m/0": ["a", "b"], "m/1": ["b", "d"]})
    assert split.tolist() == [[False, False, True, True, True], [True, False, True, False, True]]


def test_fair_split_no_subsets():
    assert fair_split(["a"], {}).shape == (0, 1)


def test_subset_prompts_from_the_models_json(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("p0\np1\np2\np3\n")

    def pruned(method, subset, indices):
        return {"variant": "pruned", "method": method, "subset": subset, "scores": "x.nc", "prompts_file": str(f),
                "indices": indices}

    models = read_models(json.dumps({"none": {"variant": "none", "scores": "n.nc"}, "a": pruned("wanda", "c/0", [3, 1]),
                                     "b": pruned("random", "c/1", [0]), "c": pruned("wanda", "c/1", [0])}))
    assert [(m.vid, m.subset) for m in models] == [("none", None), ("pruned:wanda", "c/0"), ("pruned:random", "c/1"),
                                                   ("pruned:wanda", "c/1")]
    assert subset_prompts(models) == {"c/0": ["p3", "p1"], "c/1": ["p0"]}
    clash = {"none": {"variant": "none", "scores": "n.nc"}, "a": pruned("wanda", "c/0", [3]),
             "b": pruned("random", "c/0", [2])}
    with pytest.raises(InputError, match="c/0: b names other prompts"):
        subset_prompts(read_models(json.dumps(clash)))
    with pytest.raises(InputError, match="unedited model"):
        read_models(json.dumps({"a": pruned("wanda", "c/0", [3])}))
    with pytest.raises(InputError, match="give prompts_file, indices"):
        read_models(json.dumps({"none": {"variant": "none", "scores": "n.nc"},
                                "a": {"variant": "pruned", "subset": "c/0", "scores": "x.nc"}}))
    # a trained variant (adversarial fine-tuning) has a checkpoint but is one model, tested on every prompt
    trained = read_models(json.dumps({"none": {"variant": "none", "scores": "n.nc"},
                                      "adversarial": {"variant": "adversarial", "scores": "a.nc"}}))
    assert [(m.vid, m.subset, m.per_subset) for m in trained] == [("none", None, False), ("adversarial", None, False)]


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
    gt = TrainingImages(None, tmp_path / "gt", prompts)
    assert gt.images("second").shape == (1, 8, 8, 3)
    with pytest.raises(InputError, match=r"memorized prompt 0 .*gt/0/\*\.png"):
        gt.images("first")


def test_clip_trained_on_other_testbed_data_is_refused(tmp_path):
    import json

    from memprune.testbed.dataset import DatasetSpec, check_trained_on, dataset_digest, generate_dataset

    data = generate_dataset(DatasetSpec(seed=1, n_duplicated=2, duplication=2, n_single=2, renders_per_scene=1),
                            tmp_path / "data").parent
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "memprune_clip.json").write_text(json.dumps({"dataset_sha256": dataset_digest(data)}))
    check_trained_on(clip, data, "memprune_clip.json")  # the same data: accepted
    (clip / "memprune_clip.json").write_text(json.dumps({"dataset_sha256": "0" * 64}))
    with pytest.raises(InputError, match=r"clip: trained on another testbed dataset .*memprune_clip\.json"):
        check_trained_on(clip, data, "memprune_clip.json")


def test_ground_truth_from_the_testbed_manifest(tmp_path):
    from memprune.testbed.dataset import DatasetSpec, generate_dataset, read_manifest

    data = generate_dataset(DatasetSpec(seed=1, n_duplicated=2, duplication=2, n_single=2, renders_per_scene=1),
                            tmp_path / "data").parent
    rows = read_manifest(data / "manifest.jsonl")
    dup = next(r["caption"] for r in rows if r["group"] == "duplicated")
    heldout = next(r for r in rows if r["split"] == "heldout")
    gt = TrainingImages(data)
    assert gt.rows == rows and gt.attributes[heldout["caption"]]["shape"] == heldout["shape"]
    assert gt.images(dup).shape == (1, 32, 32, 3) and gt.images(heldout["caption"]).shape == (1, 32, 32, 3)
    # what the attack reads: the train split's images, None where a prompt has none there
    refs = gt.references([dup, heldout["caption"], "not a caption"])
    assert refs[0].shape == (1, 32, 32, 3) and refs[1] is None and refs[2] is None
    assert np.array_equal(gt.first_image(dup), refs[0][0]) and gt.first_image("not a caption") is None
    with pytest.raises(InputError, match="not in .*manifest.jsonl"):
        gt.images("not a caption")
    model = tmp_path / "model"
    model.mkdir()
    (model / "memprune_train.json").write_text(json.dumps({"dataset_sha256": "0" * 64}))
    with pytest.raises(InputError, match="trained on another testbed dataset"):
        TrainingImages(data, model=model)


@pytest.fixture
def registered():
    """Variants registered by a test, removed after it."""
    from memprune import variants

    names = []
    yield lambda v: (names.append(v.name), variants.register(v))[1]
    for name in names:
        variants._REGISTRY.entries.pop(name, None)


def _half_guidance(pipe, prompts, seeds, cfg, params, progress=False):
    from dataclasses import replace

    from memprune.sampling import generate

    factor = params.get("factor", 0.5)
    images = generate(pipe, prompts, seeds, replace(cfg, guidance=cfg.guidance * factor), progress=progress)
    return images, {"bright": images.mean(axis=(1, 2, 3)), "dark": images.mean(axis=(1, 2, 3)) < 1,
                    "halfguidance_factor": factor, "halfguidance_seconds": 1.0}


@pytest.mark.slow  # minutes of model work on 2 cores: out of the fast tier
def test_a_variant_registered_from_outside_is_sampled_by_eval_sample(tiny_model, tiny_pipe, tmp_path, registered):
    from memprune.cli import main
    from memprune.evaluate.score import Samples
    from memprune.sampling import SamplingConfig, generate
    from memprune.variants import Variant

    registered(Variant(name="halfguidance", label="half guidance", colour="tab:purple", generate=_half_guidance,
                       default_params={"factor": 0.25}))
    (tmp_path / "mem.txt").write_text("".join(p + "\n" for p in MEM[:3]))
    (tmp_path / "non.txt").write_text("".join(p + "\n" for p in NON))
    common = ["--model", str(tiny_model), "--steps", "3", "--guidance", "4", "--batch-size", "4", "--device", "cpu",
              "--dtype", "float32", "--seeds", "0,1", "--memorized", str(tmp_path / "mem.txt"), "--nonmemorized",
              str(tmp_path / "non.txt"), "--max-nonmemorized", "1"]
    out = tmp_path / "samples"
    assert main(["eval-sample", "--variant", "halfguidance", "--variant-params", '{"factor": 0.5}', *common,
                 "--out", str(out)]) == 0
    samples = Samples(out)
    assert samples.prompts == MEM[:3] + NON[:1] and samples.seeds == [0, 1]
    assert samples.groups == ["memorized"] * 3 + ["nonmemorized"]
    flat_p = [p for p in samples.prompts for _ in (0, 1)]
    expected = generate(tiny_pipe, flat_p, [0, 1] * 4, SamplingConfig(steps=3, guidance=2.0, batch_size=4))
    assert np.array_equal(samples.images(range(4)).reshape(expected.shape), expected)
    timing = samples.timing
    assert timing["variant"] == "halfguidance" and timing["n_images"] == 8 and timing["seconds"] > 0
    assert timing["variant_params"] == {"factor": 0.5} and timing["halfguidance_factor"] == 0.5
    assert timing["halfguidance_seconds"] == 1.0  # summed over the timed chunks: one chunk here
    assert timing["halfguidance_mean_bright"] == pytest.approx(expected.mean())
    assert timing["halfguidance_dark_fraction"] == 0.0
    # a variant that needs an edit checkpoint refuses to run without one; an unknown name is an input error
    registered(Variant(name="edited_somehow", label="edited", colour="k", needs_checkpoint=True))
    assert main(["eval-sample", "--variant", "edited_somehow", *common, "--out", str(tmp_path / "x")]) == 2
    assert main(["eval-sample", "--variant", "no_such_variant", *common, "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


MEM6 = [f"memorized prompt {i}" for i in range(6)]
NON3 = [f"other prompt {i}" for i in range(3)]


def _fake_scores(root, name, copy_value, seconds_per_image, seeds=(0, 1)):
    """A samples directory of flat images and its scores file (every copy similarity `copy_value`)."""
    from PIL import Image

    prompts, groups = MEM6 + NON3, ["memorized"] * 6 + ["nonmemorized"] * 3
    samples = root / "samples" / name
    samples.mkdir(parents=True)
    rows = []
    for i, p in enumerate(prompts):
        for s in seeds:
            Image.fromarray(np.full((8, 8, 3), 20 * i + 5 * s, np.uint8)).save(samples / f"{i:05d}_s{s}.png")
            rows.append({"file": f"{i:05d}_s{s}.png", "prompt": p, "seed": s, "group": groups[i]})
    with open(samples / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "prompt", "seed", "group"])
        writer.writeheader()
        writer.writerows(rows)
    (samples / "timing.json").write_text(json.dumps({"seconds_per_image": seconds_per_image}))
    n_p, n_s = len(prompts), len(seeds)
    copy = np.where(np.array(groups)[:, None] == "memorized", copy_value, np.nan) * np.ones((n_p, n_s))
    rng = np.random.default_rng(len(name))
    ds = xr.Dataset(
        {"copy_similarity": (("prompt", "seed"), copy), "clip_score": (("prompt", "seed"), np.full((n_p, n_s), 30.0)),
         "follows_prompt": (("prompt", "seed"), np.full((n_p, n_s), np.nan)),
         "features": (("prompt", "seed", "feature"), rng.normal(size=(n_p, n_s, 2)))},
        coords={"prompt": np.array(prompts, dtype=object), "seed": list(seeds),
                "group": ("prompt", np.array(groups, dtype=object))},
        attrs={"samples": str(samples), "copy_metric": "ssim", "feature_space": "clip_image_embedding",
               "timing_seconds_per_image": seconds_per_image, "timing_cpu_seconds_per_image": seconds_per_image / 2})
    path = root / "scores" / f"{name}.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="h5netcdf")
    return str(path)


def test_eval_aggregate_lays_out_variants_by_method_and_subsets(tmp_path):
    from PIL import Image

    from memprune.cli import main

    (tmp_path / "mem.txt").write_text("".join(p + "\n" for p in MEM6))
    (tmp_path / "non.txt").write_text("".join(p + "\n" for p in NON3))
    (tmp_path / "gt" / "0").mkdir(parents=True)  # a training image for the first prompt only
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "gt" / "0" / "0.png")
    (tmp_path / "bench.tsv").write_text("s\th:m:s\n10.0\t0:00:10\n")
    subsets = {"m/0": [0, 1], "m/1": [2, 3], "m/2": [4, 5]}

    def pruned(method, subset, copy_value):
        return {"variant": "pruned", "method": method, "subset": subset, "prompts_file": str(tmp_path / "mem.txt"),
                "indices": subsets[subset], "scores": _fake_scores(tmp_path, f"{method}{subset[-1]}", copy_value, 0.5),
                "mask_costs": [[str(tmp_path / "bench.tsv"), 0.5], [str(tmp_path / "gone.tsv"), 1.0]]}

    models = {"none": {"variant": "none", "scores": _fake_scores(tmp_path, "none", 0.9, 1.0)},
              "pruned:wanda|m/0": pruned("wanda", "m/0", 0.1), "pruned:wanda|m/1": pruned("wanda", "m/1", 0.1),
              "pruned:random|m/1": pruned("random", "m/1", 0.5), "pruned:random|m/2": pruned("random", "m/2", 0.5),
              "wen": {"variant": "wen", "scores": _fake_scores(tmp_path, "wen", 0.3, 2.0)}}
    (tmp_path / "models.json").write_text(json.dumps(models))
    out = {k: str(tmp_path / f"{k}.{ext}") for k, ext in (("eval", "nc"), ("summary", "csv"), ("scatter", "png"),
                                                          ("bars", "png"), ("grid", "png"))}
    assert main(["eval-aggregate", "--models-json", str(tmp_path / "models.json"), "--copy-threshold", "0.4",
                 "--fid-reference", "unedited", "--memorized", str(tmp_path / "mem.txt"), "--ground-truth",
                 str(tmp_path / "gt"), "--mask-cost-note", "test", "--out", out["eval"], "--summary", out["summary"],
                 "--fig-scatter", out["scatter"], "--fig-bars", out["bars"], "--fig-grid", out["grid"],
                 "--report-thresholds", "0.2,0.5"]) == 0
    ds = xr.open_dataset(out["eval"], engine="h5netcdf").load()
    assert list(ds.variant.values) == ["none", "pruned:wanda", "pruned:random", "wen"]
    # the fraction of memorized test images at or above each threshold (copies 0.9, 0.1, 0.5, 0.3; >= counts)
    assert ds.threshold.values.tolist() == [0.2, 0.5]
    np.testing.assert_array_equal(ds.fraction_over.sel(subset="m/1").values, [[1, 1], [0, 0], [1, 1], [1, 0]])
    assert np.isnan(ds.fraction_over.sel(variant="pruned:wanda", subset="m/2")).all()
    assert list(ds.subset.values) == ["m/0", "m/1", "m/2"] and list(ds.collection.values) == ["m"] * 3
    assert ds.in_test.values[:, :6].tolist() == [[i // 2 != k for i in range(6)] for k in range(3)]
    assert ds.in_test.values[:, 6:].all()
    sim = ds.copy_similarity
    # a method's cell for a subset it has no model of is all NaN; baselines sit on every subset's test set
    assert np.isnan(sim.sel(variant="pruned:wanda", subset="m/2")).all()
    assert np.isnan(sim.sel(variant="pruned:random", subset="m/0")).all()
    cell = sim.sel(variant="pruned:random", subset="m/1").values
    assert np.all(cell[[0, 1, 4, 5]] == 0.5) and np.isnan(cell[[2, 3]]).all() and np.isnan(cell[6:]).all()
    mem_test = ds.in_test.values & (ds.group.values == "memorized")[None]
    for v, value in (("none", 0.9), ("wen", 0.3)):
        assert np.all(sim.sel(variant=v).values[mem_test] == value)
        assert np.isnan(sim.sel(variant=v).values[~ds.in_test.values]).all()
    np.testing.assert_array_equal(ds.copy_rate.values, [[1, 1, 1], [0, 0, np.nan], [np.nan, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(ds.copy_rate_own_subset.values,
                                  [[np.nan] * 3, [0, 0, np.nan], [np.nan, 1, 1], [np.nan] * 3])
    np.testing.assert_array_equal(ds.mask_seconds.values, [[0, 0, 0], [5, 5, np.nan], [np.nan, 5, 5], [0, 0, 0]])
    np.testing.assert_array_equal(ds.seconds_per_image.values, [[1, 1, 1], [0.5, 0.5, np.nan], [np.nan, 0.5, 0.5],
                                                                [2, 2, 2]])
    assert ds.sampling_seconds.sel(variant="none", subset="m/0") == 1.0 * 7 * 2  # 4 memorized + 3 others, 2 seeds
    assert np.all(ds.frechet_distance.sel(variant="none") == 0.0)
    assert ds.attrs["mask_cost_included"] == "test" and ds.attrs["mask_benchmarks_missing"].count("gone.tsv") == 4
    # 95% intervals from the per-prompt data: Wilson for the copy rates (4 test prompts per subset, 2 own), the
    # bootstrap over prompts for means, the paired bootstrap for the difference from the unedited model
    assert ds.copy_rate_lo.sel(variant="none", subset="m/0") == pytest.approx(0.5101, abs=1e-4)  # 4 of 4
    assert ds.copy_rate_hi.sel(variant="pruned:wanda", subset="m/0") == pytest.approx(0.4899, abs=1e-4)  # 0 of 4
    assert np.isnan(ds.copy_rate_lo.sel(variant="pruned:wanda", subset="m/2"))
    # 0 of 2
    assert ds.copy_rate_own_subset_hi.sel(variant="pruned:wanda", subset="m/0") == pytest.approx(0.6576, abs=1e-4)
    np.testing.assert_array_equal(ds.copy_rate_minus_none.values,
                                  [[0, 0, 0], [-1, -1, np.nan], [np.nan, 0, 0], [-1, -1, -1]])
    np.testing.assert_array_equal(ds.copy_rate_minus_none_lo.sel(variant="none").values, [0, 0, 0])
    assert ds.fraction_over_lo.dims == ("variant", "subset", "threshold")
    assert ds.mean_copy_similarity_lo.sel(variant="none", subset="m/0") == pytest.approx(0.9)  # every value 0.9
    assert "Wilson" in ds.attrs["interval_method_rates"] and "paired" in ds.attrs["interval_method_differences"]
    assert "bootstrap" in ds.attrs["interval_method_means"] and "Wilson" in ds.copy_rate_hi.attrs["interval_method"]
    rows = list(csv.DictReader(open(out["summary"])))
    assert [(r["variant"], r["subset"]) for r in rows] == [
        ("none", "all"), ("pruned:wanda", "mean"), ("pruned:random", "mean"), ("wen", "all"), ("pruned:wanda", "m/0"),
        ("pruned:wanda", "m/1"), ("pruned:random", "m/1"), ("pruned:random", "m/2")]
    assert float(rows[2]["copy_rate"]) == 1.0 and float(rows[1]["time_per_image_vs_none"]) == 0.5
    assert [float(r["fraction_over_0.5"]) for r in rows[:4]] == [1.0, 0.0, 1.0, 0.0]
    # the summary's intervals beside their values; a variant's mean row pools its subsets' prompts
    head = list(rows[0])
    assert head[head.index("copy_rate") + 1: head.index("copy_rate") + 6] == [
        "copy_rate_lo", "copy_rate_hi", "copy_rate_minus_none", "copy_rate_minus_none_lo", "copy_rate_minus_none_hi"]
    assert head[-1] == "interval_method" and "fraction_over_0.5_hi" in head
    assert float(rows[0]["copy_rate_lo"]) == pytest.approx(0.61, abs=1e-2)  # the unedited model: 6 prompts pooled
    assert float(rows[1]["copy_rate_minus_none_hi"]) == -1.0 and float(rows[0]["copy_rate_minus_none_lo"]) == 0.0
    # the Frechet distance (reference: the unedited model's own generations, so its own is 0 with no interval)
    assert np.isnan(ds.frechet_distance_lo.sel(variant="none")).all()
    fd = ds.frechet_distance.sel(variant="wen", subset="m/0")
    assert ds.frechet_distance_lo.sel(variant="wen", subset="m/0") <= fd <= ds.frechet_distance_hi.sel(
        variant="wen", subset="m/0") and "resampled prompts" in ds.attrs["interval_method_frechet"]
    assert head[head.index("frechet_distance") + 1: head.index("frechet_distance") + 3] == [
        "frechet_distance_lo", "frechet_distance_hi"] and rows[0]["frechet_distance_lo"] == ""
    for k in ("scatter", "bars", "grid"):
        assert Path(out[k]).stat().st_size > 1000
    from memprune.evaluate.figures import styles

    style = styles(ds.variant.values)
    assert style["pruned:wanda"][1] == "pruned models (wanda)" and style["wen"][1] == "Wen et al. (inference-time)"
    assert style["pruned:wanda"][0] != style["pruned:random"][0]  # a second method in a lighter shade


def _write_ground_truth(root, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        (root / str(i)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / str(i) / "train.png")


@pytest.fixture(scope="module")
def eval_run(tiny_model, tmp_path_factory):
    from memprune.testbed.clip import ClipSpec, save_untrained_clip

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


@pytest.mark.slow
def test_prune_rule_in_the_dag_zeroes_the_union_mask(eval_run):
    """masks -> prune in the evaluation's DAG: each checkpoint zeroes exactly its subset's union mask."""
    import yaml

    from memprune.formats.edits import load_edited_pipeline, read_manifest
    from memprune.formats.masks import read_mask_set

    wd = eval_run
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    tag = f"seed0_steps{cfg['sampling']['steps']}_g{cfg['sampling']['guidance']}_paper_sp0.05_tau3"
    for subset in (0, 1):
        target = f"results/tiny/pruned/wanda/{tag}/m5/{subset}"
        manifest = read_manifest(wd / target)
        ms = read_mask_set(wd / f"results/tiny/masks/wanda/{tag}/m5/{subset}.zarr")
        assert manifest["zeroed"] == ms.n_set() and manifest["zeroed_total"] > 0
        assert manifest["method"] == "wanda" and manifest["params"] == {"sparsity": 0.05, "tau": 3}
        assert (wd / f"logs/tiny/prune/wanda/{tag}/m5_{subset}.log").exists()
        assert (wd / f"benchmarks/tiny/prune/wanda/{tag}/m5_{subset}.tsv").exists()
    load_edited_pipeline(wd / target, device="cpu")  # the base path recorded in the manifest resolves
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(wd, "-n", target))


@pytest.mark.slow
def test_end_to_end_evaluation(eval_run):
    wd = eval_run
    ds = xr.open_dataset(wd / "results/tiny/eval.nc", engine="h5netcdf")
    assert dict(ds.copy_similarity.sizes) == {"variant": 3, "subset": 2, "prompt": len(MEM) + len(NON), "seed": 2}
    assert list(ds.variant.values) == ["none", "pruned:wanda", "wen"]  # the default localizer, wanda
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
    assert [(r["variant"], r["subset"]) for r in rows][:3] == [("none", "all"), ("pruned:wanda", "mean"),
                                                               ("wen", "all")]
    assert len(rows) == 5 and "copy_rate_vs_none" in rows[0]
    for fig in ("eval_copy_vs_clip", "eval_fid_time", "eval_grid"):
        assert (wd / f"results/tiny/figures/{fig}.png").stat().st_size > 1000
    timing = (wd / "results/tiny/eval/steps6_g3.0/samples/wen/timing.json").read_text()
    assert "wen_mean_iterations" in timing


@pytest.mark.slow
def test_second_run_does_nothing(eval_run):
    proc = snakemake(eval_run, "-n", "results/tiny/eval.nc")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_one_sampling_job_per_variant_and_subset_cap(eval_run, tiny_model, tmp_path):
    from test_workflow import planned_jobs

    write_config(tmp_path, tiny_model, {"mem": MEM}, {"m5": {"set": "mem", "n_subsets": 2, "size": 5, "seed": 0}},
                 evaluate={"collections": ["m5"], "max_subsets": 1, "ground_truth": str(tmp_path)})
    jobs = planned_jobs(snakemake(tmp_path, "-n", "results/tiny/eval.nc"))
    assert jobs["eval_sample"] == 3 and jobs["eval_score"] == 3  # none, one pruned model, wen
    assert jobs["eval_aggregate"] == 1
