"""Extraction attack (tiled distance, cliques), detection (Wen et al.'s score, ROC), and the closed-loop DAG."""


import numpy as np
import pytest
import xarray as xr

from conftest import REPO, snakemake, write_config
from test_workflow import planned_jobs
from memprune.attacks.detection import detection_scores, roc_auc, top_k_prompts, tpr_at_fpr
from memprune.attacks.extraction import format_table, identify, largest_clique, pairwise_tiled_distances
from memprune.evaluate.metrics import tiled_l2


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 100, size=(32, 32, 3), dtype=np.uint8)  # room for +153


def test_tiled_distance_identical_is_zero():
    a = _image(0)
    assert tiled_l2(a[None], a[None])[0, 0] == pytest.approx(0.0, abs=1e-6)
    d = pairwise_tiled_distances(np.stack([a, a, _image(1)]))
    assert d.shape == (3, 3) and np.allclose(d, d.T)
    assert d[0, 1] == pytest.approx(0.0, abs=1e-6) and np.all(np.diag(d) == 0)
    assert d[0, 2] > 0.1


def test_tiled_distance_is_the_worst_tile():
    """A change confined to one 8x8 tile sets the distance to that tile's RMS difference (pixels in [0, 1]),
    however small the change is over the whole image; a larger change in another tile takes over the max."""
    a = _image(0)
    b = a.copy()
    b[8:16, 16:24] += 51  # tile (1, 2): every pixel +0.2
    assert tiled_l2(a[None], b[None])[0, 0] == pytest.approx(0.2, abs=1e-6)
    whole_image_rms = np.sqrt(((a / 255.0 - b / 255.0) ** 2).mean())
    assert whole_image_rms == pytest.approx(0.2 / 4, abs=1e-6)  # one of 16 tiles: the plain L2 would dilute it
    c = b.copy()
    c[24:32, 0:8, 0] += 153  # tile (3, 0), one channel +0.6: RMS over the tile's 3 channels 0.6 / sqrt(3)
    assert tiled_l2(a[None], c[None])[0, 0] == pytest.approx(0.6 / np.sqrt(3), abs=1e-6)
    # vectorised over all pairs: the same values as one pair at a time
    batch = np.stack([a, b, c])
    full = tiled_l2(batch, batch)
    for i in range(3):
        for j in range(3):
            assert full[i, j] == pytest.approx(tiled_l2(batch[i : i + 1], batch[j : j + 1])[0, 0], abs=1e-6)


def _planted_distances(n=12, members=(1, 4, 6, 9, 10), seed=0):
    """Random far-apart distances, a planted clique of close images, and a near-clique (one edge missing)."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.2, 0.6, size=(n, n))
    d = np.triu(d, 1) + np.triu(d, 1).T
    for i in members:
        for j in members:
            if i != j:
                d[i, j] = 0.01
    near = (0, 2, 3, 5, 7, 8)  # 6 images, all close except the pair (0, 2): largest clique inside is 5
    for i in near:
        for j in near:
            if i != j:
                d[i, j] = 0.02
    d[0, 2] = d[2, 0] = 0.3
    return d


def test_largest_clique_finds_the_planted_one():
    d = _planted_distances(members=(1, 4, 6, 9, 10, 11))
    assert largest_clique(d, 0.05) == [1, 4, 6, 9, 10, 11]
    # without the planted clique the near-clique's 5 remain: a max clique, not a connected component (6)
    d2 = _planted_distances(members=())
    clique = largest_clique(d2, 0.05)
    assert len(clique) == 5 and not {0, 2} <= set(clique)
    # no edge below the threshold: a single image
    assert len(largest_clique(d2, 0.005)) == 1


def test_identify_rules():
    def far_with(close):
        d = np.full((12, 12), 0.4)
        d[np.ix_(close, close)] = 0.01
        np.fill_diagonal(d, 0)
        return d

    d = np.stack([far_with([1, 4, 6]), far_with([2, 3]), far_with([1, 4, 6])])  # prompt 1: only a pair
    ssim = np.full((3, 12), 0.1)
    ssim[0, [1, 4, 6]] = 0.8  # prompt 0's clique copies its training image
    ssim[2] = np.nan  # prompt 2: no ground truth
    res = identify(d, ssim, threshold=0.015, min_clique=3, copy_threshold=0.4)
    assert res["clique_size"].tolist() == [3, 2, 3]
    assert res["identified"].tolist() == [True, False, True]
    assert res["actually_memorized"].tolist() == [True, False, False]
    assert res["has_truth"].tolist() == [True, True, False]
    assert res["clique_ssim"][0] == pytest.approx(0.8)


def test_roc_auc_and_tpr_on_known_scores():
    assert roc_auc([3, 4, 5], [1, 2, 3]) == pytest.approx(8.5 / 9)  # the tie 3 = 3 counts one half
    assert roc_auc([2, 3], [0, 1]) == 1.0 and roc_auc([0, 1], [2, 3]) == 0.0
    assert tpr_at_fpr([3, 4, 5], [1, 2, 3], 0.01) == pytest.approx(2 / 3)  # flagged: strictly above every negative
    neg = np.arange(100.0)  # 1% of 100 negatives: one may lie above the threshold (98)
    assert tpr_at_fpr([97.5, 98.5, 99.5, 150], neg, 0.01) == pytest.approx(0.75)
    assert tpr_at_fpr([97.5, 98.5, 99.5, 150], neg, 0.0) == pytest.approx(0.5)  # threshold 99
    rng = np.random.default_rng(0)
    pos, negs = rng.normal(1, 1, 50), rng.normal(0, 1, 70)
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in negs])
    assert roc_auc(pos, negs) == pytest.approx(brute)


def test_format_table_has_the_papers_rows():
    import pandas as pd

    table = pd.DataFrame([
        {"variant": "none", "group": "memorized", "prompts": 50, "identified": 45, "identified_pct": 90.0,
         "actually_memorized": 44, "actually_memorized_pct": 88.0},
        {"variant": "pruned_mem_k10_0", "group": "memorized", "prompts": 50, "identified": 2, "identified_pct": 4.0,
         "actually_memorized": None, "actually_memorized_pct": None},
    ])
    text = format_table(table)
    assert "identified as memorized" in text and "45/50 (90%)" in text and "n/a" in text


PLANTED = "a xylophone"
OTHERS = ["a red circle at the left", "a blue square on a gray background", "ancient garden and bronze pepper",
          "a cat", "lighthouse dragon by soren"]


def _planted_pipe(tiny_model, factor=3000.0):
    """The tiny pipeline with memorization planted in the text path: the final layer norm removed (so hidden
    states keep their scale) and the planted word's token embeddings scaled up: its text conditions the UNet's
    cross-attention far more than any other prompt's."""
    import torch

    from memprune.models import load_pipeline

    pipe = load_pipeline(tiny_model, "cpu", "float32")
    text = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)  # transformers 5 flattened CLIPTextModel
    text.final_layer_norm = torch.nn.Identity()
    ids = pipe.tokenizer("xylophone", add_special_tokens=False).input_ids
    others = {i for p in OTHERS for i in pipe.tokenizer(p, add_special_tokens=False).input_ids}
    assert ids and not set(ids) & others
    with torch.no_grad():
        text.embeddings.token_embedding.weight[ids] *= factor
    return pipe


def test_detection_ranks_the_planted_prompt_first(tiny_model):
    pipe = _planted_pipe(tiny_model)
    prompts = OTHERS[:2] + [PLANTED] + OTHERS[2:]
    scores = detection_scores(pipe, prompts, seeds=[0, 1], steps=4, score_steps=2, guidance=3.0, batch_size=5)
    assert scores.shape == (6, 2) and np.all(scores > 0)
    mean = scores.mean(1)
    assert int(np.argmax(mean)) == 2, mean
    assert mean[2] > 2 * np.sort(mean)[-2]
    # batch-independent and deterministic
    again = detection_scores(pipe, prompts, seeds=[0, 1], steps=4, score_steps=2, guidance=3.0, batch_size=3)
    assert np.allclose(scores, again, rtol=1e-4)
    # AUC of the planted prompt against the rest is 1
    assert roc_auc(mean[[2]], np.delete(mean, 2)) == 1.0


def test_top_k_prompts(tmp_path):
    from memprune.formats.store import write_netcdf

    files = []
    for name, prompts, scores in [("a", ["p1", "p2", "p3"], [0.5, 3.0, 1.0]), ("b", ["q1", "p3"], [2.0, 1.0])]:
        ds = xr.Dataset({"score": (("prompt",), np.array(scores))},
                        coords={"prompt": np.array(prompts, dtype=object),
                                "group": ("prompt", np.array([name] * len(prompts), dtype=object))})
        files.append(tmp_path / f"{name}.nc")
        write_netcdf(ds, files[-1])
    assert top_k_prompts(files, 3) == ["p2", "q1", "p3"]  # p3 in both sets: once
    with pytest.raises(ValueError, match="fewer than top_k"):
        top_k_prompts(files, 5)


MEM = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:8]
SINGLE = (REPO / "resources/prompts/testbed/single.txt").read_text().splitlines()[:6]


def _closed_loop_config(wd, model, full=True, attack_extra=None):
    """Closed loop on the tiny model: `detected` = the top 5 of mem + single by detection score; collection
    det_k3 drawn from it (and, `full`, mem_k3 from the true list, both attacked after pruning)."""
    collections = {"det_k3": {"set": "detected", "n_subsets": 2 if full else 1, "size": 3, "seed": 0}}
    pruned = {"det_k3": [0]}
    if full:
        collections["mem_k3"] = {"set": "mem", "n_subsets": 2, "size": 3, "seed": 0}
        pruned["mem_k3"] = [1]
    return write_config(
        wd, model, {"mem": MEM, "single": SINGLE}, collections,
        prompt_sets={"detected": {"detect_from": ["mem", "single"], "top_k": 5}},
        activations={"chunk_size": 4 if full else 8},
        attack={"candidates": ["mem", "single"], "pruned": pruned, "n_samples": 3, "steps": 2, "guidance": 2.0,
                "batch_size": 16, "chunk_size": 4 if full else 8, **(attack_extra or {})},
        detection={"candidates": ["mem", "single"], "positive": ["mem"], "n_seeds": 2, "steps": 3, "score_steps": 2,
                   "guidance": 2.0, "batch_size": 16},
    )


@pytest.mark.slow
def test_closed_loop_dag_dry_run(tiny_model, tmp_path):
    _closed_loop_config(tmp_path, tiny_model)
    table = "results/tiny/attack/table.csv"
    proc = snakemake(tmp_path, "-n", table, "results/tiny/detection.nc", "results/iou.nc")
    jobs = planned_jobs(proc)
    # detection scores the pool (2 sets), the checkpoint picks the top 5; the attack of the unedited model and of
    # the true-list pruned model are planned now: 2 chunks of mem (8 prompts) and 2 of single (6), per variant
    assert jobs["detection_scores"] == 2 and jobs["detected_prompts"] == 1 and jobs["detection_report"] == 1
    # 4 chunks for each of the 3 attacked models: unedited, pruned det_k3/0 and mem_k3/1 (their generation jobs are
    # planned now; the detected set's pruned model's inputs come once the checkpoint ran)
    assert jobs["attack_generate"] == 12
    assert jobs["attack_table"] == 1 and jobs["analysis"] == 1
    # the detected set's activations wait for the checkpoint: its subset jobs are planned with input <TBD>, and
    # only the true list's prompts (2 chunks of 4) are captured yet
    assert jobs["gather_subsets"] == 2 and jobs["capture_chunk"] == 2
    det_job = proc.stdout[proc.stdout.index("subsets/det_k3\n") - 400 :]
    assert "input: <TBD>" in det_job[:500]
    assert "checkpoint" in proc.stdout


@pytest.mark.slow
def test_attack_and_closed_loop_run(tiny_model, tmp_path):
    """The whole closed loop on a tiny random model: detection, top-k, masks of the detected set, pruning, attack."""
    _closed_loop_config(tmp_path, tiny_model, full=False)
    table = "results/tiny/attack/table.csv"
    snakemake(tmp_path, table, "results/tiny/detection.nc")
    detected = next((tmp_path / "results/tiny/detection").glob("*/detected/detected.txt")).read_text().splitlines()
    assert len(detected) == 5 and set(detected) <= set(MEM + SINGLE)
    det = xr.open_dataset(tmp_path / "results/tiny/detection.nc", engine="h5netcdf")
    assert det.sizes["prompt"] == len(MEM) + len(SINGLE) and det.comparison.values.tolist() == ["mem_vs_single"]
    ranked = det.prompt.values[np.argsort(-det.score.values, kind="stable")][:5].tolist()
    assert ranked == detected
    import pandas as pd

    tab = pd.read_csv(tmp_path / table)
    assert set(tab.variant) == {"none", "pruned:wanda|det_k3/0"} and set(tab.group) == {"mem", "single"}
    assert (tab.prompts[tab.group == "mem"] == len(MEM)).all()
    none = xr.open_dataset(tmp_path / "results/tiny/attack/none.nc", engine="h5netcdf")
    assert none.sizes["prompt"] == len(MEM) + len(SINGLE) and none.sizes["seed"] == 3
    assert not none.has_truth.values.any()  # not the testbed: no ground truth
    assert (tmp_path / "results/tiny/figures/attack.png").stat().st_size > 500
    # thresholds only touch the analysis: no generation job is planned after a threshold change
    _closed_loop_config(tmp_path, tiny_model, full=False, attack_extra={"distance_threshold": 0.2})
    jobs = planned_jobs(snakemake(tmp_path, "-n", table))
    assert "attack_generate" not in jobs
    assert jobs.get("attack_analyze") == 2


def test_attack_refuses_ground_truth_from_another_testbed_dataset(tmp_path):
    """A testbed model trained on other photos than `data_dir` would get a wrong "actually memorized" column:
    the attack stops before sampling, naming the model's training record."""
    import json

    from memprune.attacks.extraction import attack_chunk
    from memprune.errors import InputError
    from memprune.sampling import SamplingConfig
    from memprune.testbed.dataset import DatasetSpec, generate_dataset

    data = generate_dataset(DatasetSpec(seed=1, n_duplicated=2, duplication=2, n_single=2, renders_per_scene=1),
                            tmp_path / "data").parent
    model = tmp_path / "model"
    model.mkdir()
    (model / "memprune_train.json").write_text(json.dumps({"dataset_sha256": "0" * 64}))
    out = tmp_path / "chunk.nc"
    with pytest.raises(InputError, match=r"model: trained on another testbed dataset .*memprune_train\.json"):
        attack_chunk(str(model), ["a prompt"], "memorized", [0], SamplingConfig(steps=2), out, data_dir=data)
    assert not out.exists()


def test_attack_generate_runs_a_registry_variant(tiny_model, tmp_path):
    """`attack-generate --variant wen`: the chunk is generated by Wen et al.'s mitigation (its per-image record
    kept), and its attrs name the variant, the checkpoint (none) and the parameters over the defaults."""
    import json

    from memprune.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na red circle at the left\nunused\n")
    out = tmp_path / "wen.nc"
    rc = main(["attack-generate", "--variant", "wen", "--variant-params", '{"max_iters": 1}', "--model",
               str(tiny_model),
               "--device", "cpu", "--dtype", "float32", "--steps", "2", "--guidance", "2", "--batch-size", "4",
               "--prompts-file", str(prompts), "--start", "0", "--stop", "2", "--group", "g", "--n-samples", "2",
               "--seed", "3", "--tile-grid", "4", "--out", str(out)])
    assert rc == 0
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds.attrs["variant"] == "wen" and ds.attrs["checkpoint"] == ""
    assert json.loads(ds.attrs["variant_params"]) == {"lr": 0.05, "max_iters": 1, "target_loss": 1.5}
    assert ds.images.shape[:2] == (2, 2) and ds.seed.values.tolist() == [3, 4]
    assert ds.iterations.dims == ("prompt", "seed") and (ds.iterations.values <= 1).all()
    assert ds.attrs["variant_wen_max_iters"] == 1
    # the unedited model refuses a checkpoint; an unknown name lists the registry
    assert main(["attack-generate", "--variant", "none", "--checkpoint", str(tmp_path), "--model", str(tiny_model),
                 "--device", "cpu", "--dtype", "float32", "--prompts-file", str(prompts), "--group", "g",
                 "--out", str(tmp_path / "x.nc")]) == 2
    assert main(["attack-generate", "--variant", "nope", "--model", str(tiny_model), "--prompts-file", str(prompts),
                 "--group", "g", "--out", str(tmp_path / "x.nc")]) == 2
    assert not (tmp_path / "x.nc").exists()


@pytest.mark.slow  # minutes of model work on 2 cores: out of the fast tier
def test_attack_chunk_generates_through_the_variant(tiny_model, tmp_path):
    """A variant registered from outside: the chunk holds what its `generate` made (one image for every seed:
    a full clique), not the plain model's images; "none" gives exactly `sampling.generate`'s images."""
    from memprune import variants
    from memprune.attacks.extraction import analyze_variant, attack_chunk, attack_figure, attack_table
    from memprune.models import load_pipeline
    from memprune.sampling import SamplingConfig, generate

    def same_image(pipe, prompts, seeds, cfg, params, progress=False):
        images = generate(pipe, prompts[:1] * len(prompts), seeds[:1] * len(seeds), cfg)
        return images, {"calls": np.arange(len(prompts)), "shade": params["shade"]}

    variants.names()  # discover the package's variants before adding one
    variants.register(variants.Variant(name="test_same", label="one image", colour="k", generate=same_image,
                                       default_params={"shade": 1}))
    cfg = SamplingConfig(steps=2, guidance=2.0, batch_size=4)
    prompts, seeds = ["a cat", "a red circle at the left"], [0, 1, 2]
    chunks = {}
    for name in ("none", "test_same"):
        chunks[name] = [tmp_path / f"{name}.nc"]
        attack_chunk(str(tiny_model), prompts, "g", seeds, cfg, chunks[name][0], variant=name, device="cpu",
                     dtype="float32")
    same = xr.open_dataset(chunks["test_same"][0], engine="h5netcdf")
    assert same.attrs["variant"] == "test_same" and same.attrs["variant_shade"] == 1
    assert same.calls.values.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert np.all(same.distance.values < 1e-6)
    plain = generate(load_pipeline(tiny_model, "cpu", "float32"), [p for p in prompts for _ in seeds],
                     seeds * len(prompts), cfg)
    none = xr.open_dataset(chunks["none"][0], engine="h5netcdf")
    assert np.array_equal(none.images.values.reshape(plain.shape), plain)
    files = []
    for name, label in [("none", "none"), ("test_same", "test:same|0")]:
        files.append(tmp_path / f"{name}_res.nc")
        res = analyze_variant(chunks[name], label, threshold=0.05, min_clique=3, copy=0.4, out=files[-1])
        assert res.attrs["variant"] == label and res.attrs["variant_name"] == name
    table = attack_table(files)
    assert table.variant.tolist() == ["none", "test:same|0"] and table.identified.tolist()[1] == 2
    attack_figure(files, {"none": chunks["none"], "test:same|0": chunks["test_same"]}, None, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 500


def test_attack_chunk_scores_against_the_training_images(tiny_model, tmp_path):
    """With the testbed dataset: SSIM to each caption's train-split images (NaN for a caption not in it), and the
    figure shows the training image beside the generations."""
    from memprune.attacks.extraction import analyze_variant, attack_chunk, attack_figure
    from memprune.sampling import SamplingConfig
    from memprune.testbed.dataset import DatasetSpec, generate_dataset, read_manifest

    data = generate_dataset(DatasetSpec(seed=1, n_duplicated=2, duplication=2, n_single=2, renders_per_scene=1),
                            tmp_path / "data").parent
    caption = next(r["caption"] for r in read_manifest(data / "manifest.jsonl") if r["group"] == "duplicated")
    chunk, res = tmp_path / "chunk.nc", tmp_path / "none.nc"
    attack_chunk(str(tiny_model), [caption, "not a caption"], "g", [0, 1], SamplingConfig(steps=2, batch_size=4),
                 chunk, data_dir=data, device="cpu", dtype="float32")
    ssim = xr.open_dataset(chunk, engine="h5netcdf").ssim_truth.values
    assert np.isfinite(ssim[0]).all() and np.isnan(ssim[1]).all()
    assert analyze_variant([chunk], "none", 0.05, 2, 0.4, res).has_truth.values.tolist() == [True, False]
    attack_figure([res], {"none": [chunk]}, data, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 500


def _synthetic_photos(n, seed=0):
    """n distinct 32x32 photos: smooth random blobs, far apart in SSIM."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    photos = []
    for _ in range(n):
        f = rng.uniform(1, 4, size=(3, 2))
        ph = rng.uniform(0, 2 * np.pi, size=(3, 2))
        img = np.stack([np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + ph[c, 0]) for c in range(3)], -1)
        photos.append(((img + 1) * 127.5).astype(np.uint8))
    return np.stack(photos)


def _jitter(image, n, seed):
    rng = np.random.default_rng(seed)
    return np.clip(image[None].astype(int) + rng.integers(-3, 4, size=(n, *image.shape)), 0, 255).astype(np.uint8)


def test_which_image_tells_the_prompts_own_image_from_another():
    from memprune.attacks.extraction import identify, pairwise_tiled_distances, which_image

    gallery = _synthetic_photos(4)
    captions = ["own a", "own b", "other c", "other c"]  # a caption may have several images
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    images = np.stack([
        np.concatenate([_jitter(gallery[0], 4, 0), noise[:2]]),  # "own a": a clique of its own photo
        np.concatenate([_jitter(gallery[3], 4, 1), noise[2:4]]),  # "own b": a clique of another caption's photo
        noise[:6][[5, 4, 3, 2, 1, 0]],  # "own b" again: nothing close, not identified
    ])
    prompts = ["own a", "own b", "own b"]
    distance = np.stack([pairwise_tiled_distances(im) for im in images])
    ssim_own = np.full((3, 6), 0.0)
    res = identify(distance, ssim_own, threshold=0.05, min_clique=3, copy_threshold=0.4)
    assert res["identified"].tolist() == [True, True, False] and res["clique_size"].tolist()[:2] == [4, 4]
    got = which_image(images, distance, res["clique"], res["identified"], prompts, gallery, captions, 0.4)
    assert got["nearest_image"].tolist() == [0, 3, -1]
    assert got["nearest_caption"].tolist() == ["own a", "other c", ""]
    assert got["own_image"].tolist() == [True, False, False]
    assert got["actually_memorized"].tolist() == [True, False, False]
    assert got["copies_another"].tolist() == [False, True, False]
    assert got["nearest_ssim"][0] > 0.9 and np.isnan(got["nearest_ssim"][2])
    # a clique near no training image at the copy threshold copies nothing
    far = which_image(images, distance, res["clique"], res["identified"], prompts, gallery[1:3], captions[1:3], 0.4)
    assert not far["actually_memorized"].any() and not far["copies_another"].any()


def test_analyze_variant_counts_own_and_another_image_in_the_file_and_table(tmp_path):
    """A synthetic chunk over a real dataset layout: one prompt's generations copy its own photo, one copies another
    caption's photo, one copies nothing; attack.nc and the table keep the two kinds apart."""
    from memprune.attacks.extraction import analyze_variant, attack_table, format_table, pairwise_tiled_distances
    from memprune.evaluate.training_images import TrainingImages
    from memprune.formats.store import write_netcdf
    from memprune.testbed.dataset import DatasetSpec, generate_dataset

    data = generate_dataset(DatasetSpec(seed=1, n_duplicated=3, duplication=2, n_single=2, renders_per_scene=1),
                            tmp_path / "data").parent
    truth = TrainingImages(data=data)
    dup = [r for r in truth.rows if r["group"] == "duplicated"]
    mine, theirs = dup[0], dup[1]

    def photo(row):
        return truth.images(row["caption"])[0]

    rng = np.random.default_rng(0)
    images = np.stack([_jitter(photo(mine), 5, 0), _jitter(photo(theirs), 5, 1),
                       rng.integers(0, 256, size=(5, *photo(mine).shape), dtype=np.uint8)])
    prompts = [mine["caption"], dup[2]["caption"], "a caption with no photo"]
    ssim_truth = np.stack([np.full(5, 0.9), np.full(5, 0.1), np.full(5, np.nan)]).astype(np.float32)
    chunk = xr.Dataset({"images": (("prompt", "seed", "y", "x", "rgb"), images),
                        "distance": (("prompt", "seed", "seed_j"),
                                     np.stack([pairwise_tiled_distances(i) for i in images])),
                        "ssim_truth": (("prompt", "seed"), ssim_truth)},
                       coords={"prompt": np.array(prompts, dtype=object), "seed": np.arange(5), "seed_j": np.arange(5),
                               "group": ("prompt", np.array(["memorized"] * 3, dtype=object))},
                       attrs={"variant": "none"})
    write_netcdf(chunk, tmp_path / "chunk.nc")
    res = analyze_variant([tmp_path / "chunk.nc"], "none", 0.05, 3, 0.4, tmp_path / "none.nc", data_dir=data)
    assert res.identified.values.tolist() == [True, True, False]
    assert res.actually_memorized.values.tolist() == [True, False, False]
    assert res.copies_another.values.tolist() == [False, True, False]
    assert res.nearest_caption.values.tolist()[:2] == [mine["caption"], theirs["caption"]]
    back = xr.open_dataset(tmp_path / "none.nc", engine="h5netcdf")
    assert "images" not in back and back.copies_another.values.tolist() == [False, True, False]
    table = attack_table([tmp_path / "none.nc"])
    row = table.iloc[0]
    assert (row.identified, row.actually_memorized, row.copies_another) == (2, 1, 1)
    assert row.copies_another_pct == pytest.approx(33.3)
    # Wilson's 95% interval over the group's 3 prompts beside each rate, in %; the method named in a column
    assert (row.actually_memorized_pct_lo, row.actually_memorized_pct_hi) == pytest.approx((6.1, 79.2), abs=0.1)
    assert row.identified_pct_lo < row.identified_pct < row.identified_pct_hi
    cols = list(table.columns)
    assert cols[cols.index("copies_another_pct") + 1:][:2] == ["copies_another_pct_lo", "copies_another_pct_hi"]
    assert "Wilson" in row.interval_method and cols[-1] == "interval_method"
    assert "copies another training image" in format_table(table) and "1/3 (33%)" in format_table(table)
    # without the dataset: the old rule (the own image's SSIM), and the other kind unknown
    plain = analyze_variant([tmp_path / "chunk.nc"], "none", 0.05, 3, 0.4, tmp_path / "plain.nc")
    assert plain.actually_memorized.values.tolist() == [True, False, False] and "copies_another" not in plain
    assert attack_table([tmp_path / "plain.nc"]).copies_another.isna().all()
    assert attack_table([tmp_path / "plain.nc"]).copies_another_pct_lo.isna().all()  # unknown: no interval


def test_detection_report_gives_the_auc_an_interval(tmp_path):
    """detection.nc: per comparison the AUC and its 95% interval (positives and negatives resampled apart)."""
    from memprune.attacks.detection import detection_report
    from memprune.formats.store import write_netcdf

    rng = np.random.default_rng(0)
    files = []
    for name, loc, n in (("mem", 2.0, 30), ("single", 0.0, 40), ("heldout", 0.5, 40)):
        score = rng.normal(loc, 1.0, n)
        ds = xr.Dataset({"score": (("prompt",), score)},
                        coords={"prompt": np.array([f"{name}{i}" for i in range(n)], dtype=object),
                                "group": ("prompt", np.array([name] * n, dtype=object))})
        files.append(tmp_path / f"{name}.nc")
        write_netcdf(ds, files[-1])
    detection_report(files, ["mem"], tmp_path / "detection.nc", tmp_path / "detection.csv")
    out = xr.open_dataset(tmp_path / "detection.nc", engine="h5netcdf")
    assert list(out.comparison.values) == ["mem_vs_single", "mem_vs_heldout", "mem_vs_all"]
    assert np.all(out.auc_lo < out.auc) and np.all(out.auc < out.auc_hi) and np.all(out.auc_hi <= 1)
    assert out.auc_lo.sel(comparison="mem_vs_single") > 0.8  # far apart: well above chance
    assert "stratified" in out.attrs["interval_method"] and "2000 resamples" in out.auc_lo.attrs["interval_method"]
