"""The testbed: tokenizer, dataset generator, scene reader, a few-step training run, shipped files."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import BPE, REPO, tiny_spec
from memprune.testbed.dataset import (
    DatasetSpec,
    check_trained_on,
    dataset_digest,
    generate_dataset,
    load_training_arrays,
    read_manifest,
)
from memprune.testbed.model import build_tokenizer
from memprune.testbed.scenes import describe_scene, render_scene, scene_combinations
from memprune.testbed.train import TrainSpec, train_testbed


def test_tokenizer_matches_clip_ids():
    tok = build_tokenizer(BPE, max_length=20)
    assert len(tok) == 49408
    # ids of CLIP's tokenizer for this sentence (start 49406, end 49407)
    assert tok("a red circle at the left")["input_ids"] == [49406, 320, 736, 7117, 536, 518, 1823, 49407]
    assert tok.pad_token_id == 49407 and tok.model_max_length == 20


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "spec.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


SMALL = DatasetSpec(seed=3, n_duplicated=4, duplication=3, n_single=5, renders_per_scene=1, heldout_fraction=0.2)


def test_dataset_is_seeded_and_deterministic(tmp_path):
    a = generate_dataset(SMALL, tmp_path / "a").parent
    b = generate_dataset(SMALL, tmp_path / "b").parent
    assert _digest(a) == _digest(b)
    other = generate_dataset(DatasetSpec(**{**SMALL.__dict__, "seed": 4}), tmp_path / "c").parent
    assert _digest(a) != _digest(other)
    rows = read_manifest(a / "manifest.jsonl")
    groups = {g: [r for r in rows if r["group"] == g] for g in ("duplicated", "single", "generalization")}
    assert len(groups["duplicated"]) == 4 and all(r["duplication"] == 3 for r in groups["duplicated"])
    assert len(groups["single"]) == 5 and all(r["duplication"] == 1 for r in groups["single"])
    held = [r for r in groups["generalization"] if r["split"] == "heldout"]
    assert len(held) == round(0.2 * len(scene_combinations()))
    train_captions = {r["caption"] for r in rows if r["split"] == "train"}
    assert not train_captions & {r["caption"] for r in held}  # held-out combinations never trained on
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(a / rows[0]["image"]))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    images, captions = load_training_arrays(a / "manifest.jsonl")
    assert len(images) == 4 * 3 + 5 + (len(scene_combinations()) - len(held))


def test_shipped_prompt_lists_match_the_default_dataset(tmp_path):
    manifest = generate_dataset(DatasetSpec(), tmp_path / "data")
    rows = read_manifest(manifest)
    words = {g: {w for r in rows if r["group"] == g for w in r["caption"].split()} - {"and", "by"}
             for g in ("duplicated", "single")}
    assert len(words["duplicated"]) > 40 and len(words["single"]) > 40
    assert not words["duplicated"] & words["single"]  # the single-seen control shares no word with the copies
    # the shipped model and CLIP were trained on exactly this dataset (else report and evaluation refuse them)
    digest = dataset_digest(manifest.parent)
    for info in ("testbed/memprune_train.json", "testbed_clip/memprune_clip.json"):
        path = REPO / "resources" / info
        if path.exists():
            assert json.loads(path.read_text())["dataset_sha256"] == digest, info
    for name in ("duplicated", "single", "generalization", "heldout"):
        shipped = (REPO / "resources" / "prompts" / "testbed" / f"{name}.txt").read_text()
        assert (manifest.parent / "prompts" / f"{name}.txt").read_text() == shipped, name
    # the derived testbeds: their config's added photos reproduce the dataset their shipped UNet was trained on,
    # and their shipped prompt lists
    import yaml

    from memprune.models import load_pipeline
    from memprune.testbed.derived import AddedSpec, base_of, extend_dataset

    from memprune.plan.schema import validate_config

    from memprune.plan.leaderboard import overlay

    derived = [["config.yaml"], ["config/testbed_finetune.yaml"]] + [  # the calibrated points: overlays on it
        ["config/testbed_finetune.yaml", f"config/finetune/{p.name}"]
        for p in sorted((REPO / "config/finetune").glob("*.yaml"))]
    assert len(derived) > 2
    extended = {}
    for configs in derived:
        raw = {}
        for c in configs:
            raw = overlay(raw, yaml.safe_load((REPO / c).read_text()))
        cfg = validate_config(raw)  # the schema's defaults filled in
        name = cfg["model"]["name"]
        added = AddedSpec(**cfg["testbed"]["derived"]["added"])
        key = json.dumps(cfg["testbed"]["derived"]["added"], sort_keys=True)  # the calibrated points share one
        if key not in extended:
            extended[key] = extend_dataset(manifest.parent, added, tmp_path / name).parent
        out = extended[key]
        model = REPO / cfg["model"]["path"]
        record = json.loads((model / "memprune_train.json").read_text())
        assert record["dataset_sha256"] == dataset_digest(out), name
        # the shipped UNet is what the config's training rule makes: its record holds the config's settings
        train = cfg["testbed"]["derived"]["train"]
        assert {k: record["spec"][k] for k in train} == train, name
        assert base_of(model) == (REPO / "resources" / "testbed").resolve()
        shipped = (REPO / cfg["prompt_sets"][added.group]).read_text()
        assert (out / "prompts" / f"{added.group}.txt").read_text() == shipped, name
        check_trained_on(model, out)
        assert sum(f.stat().st_size for f in model.rglob("*") if f.is_file()) < 10.5e6, name  # only a UNet added
    load_pipeline(REPO / "resources" / "testbed_planted", "cpu", "float32")


def test_describe_scene_reads_canonical_renders():
    combos = scene_combinations()
    hits = [describe_scene(render_scene(a)) == a for a in combos]
    assert np.mean(hits) > 0.97
    rng = np.random.default_rng(0)
    jittered = [describe_scene(render_scene(a, rng)) == a for a in combos]
    assert np.mean(jittered) > 0.9
    blank = np.zeros((32, 32, 3), np.uint8)
    assert describe_scene(blank)["shape"] is None


def test_few_step_training_writes_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    manifest = generate_dataset(SMALL, tmp_path / "data")
    spec = TrainSpec(vae_steps=3, vae_batch=4, unet_steps=3, cooldown_steps=2, batch_size=4, warmup=1, decoder_steps=2,
                        model=tiny_spec())
    out = train_testbed(manifest, tmp_path / "model", spec, BPE, progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    assert pipe.vae.config.scaling_factor != 0.18215  # fitted to the latents
    image = pipe("a red circle at the left on a black background", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    info = json.loads((out / "memprune_train.json").read_text())
    assert info["samples"] == 4 * 3 + 5 + (len(scene_combinations()) - 72)


@pytest.mark.skipif(not (REPO / "resources" / "testbed" / "model_index.json").exists(), reason="testbed not shipped")
def test_shipped_testbed_loads_offline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(REPO / "resources" / "testbed", local_files_only=True)
    from memprune.models import ffn_layers

    assert len(ffn_layers(pipe.unet)) >= 6
    size = sum(p.stat().st_size for p in (REPO / "resources" / "testbed").rglob("*") if p.is_file())
    assert size < 30e6


def test_testbed_report_runs_on_a_tiny_model(tiny_model, tmp_path):
    import xarray as xr

    from memprune.testbed.report import testbed_report

    generate_dataset(SMALL, tmp_path / "data")
    testbed_report(tiny_model, tmp_path / "data", tmp_path / "report.nc", tmp_path / "grid.png", seeds=[0, 1],
                   guidances=[1.0, 3.0], threshold=0.5, steps=2, batch_size=16)
    ds = xr.open_dataset(tmp_path / "report.nc", engine="h5netcdf")
    assert ds.sizes["guidance"] == 2 and ds.sizes["seed"] == 2
    assert set(ds.group.values.tolist()) == {"duplicated", "single", "heldout"}
    # an untrained model copies nothing and follows no prompt
    assert float(ds.dup_copy_rate.max()) == 0.0 and float(ds.prompt_following.max()) < 0.2
    assert (tmp_path / "grid.png").stat().st_size > 500


def test_copy_metrics_on_known_images():
    from memprune.evaluate.metrics import ssim_matrix, tiled_l2
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    sim = ssim_matrix(a, np.concatenate([a[:1], b]))
    assert np.isclose(sim[0, 0], 1.0)
    assert sim[1:, 0].max() < 0.2 and sim[:, 1:].max() < 0.2
    ref = structural_similarity(a[1], b[0], channel_axis=2, data_range=255)
    assert np.isclose(sim[1, 1], ref, atol=1e-6)
    d = tiled_l2(a, a)
    assert np.allclose(np.diag(d), 0.0, atol=1e-6) and d[0, 1] > 0.2


def test_report_refuses_data_the_model_was_not_trained_on(tmp_path, tiny_model):
    import shutil

    from memprune.errors import InputError

    data = generate_dataset(SMALL, tmp_path / "data").parent
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "memprune_train.json").write_text(json.dumps({"dataset_sha256": dataset_digest(data)}))
    check_trained_on(model, data)  # the same data: fine
    other = generate_dataset(DatasetSpec(**{**SMALL.__dict__, "seed": 9}), tmp_path / "other").parent
    with pytest.raises(InputError, match="not the dataset"):
        check_trained_on(model, other)


def test_own_photo_ssim_pairs_each_prompt_seeds_with_its_own_photo():
    from memprune.evaluate.metrics import ssim_matrix
    from memprune.testbed.report import own_photo_ssim

    rng = np.random.default_rng(0)
    own = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    noise = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    # prompt-major, 2 seeds: seed 0 is the prompt's own photo, seed 1 is noise
    images = np.stack([own[0], noise[0], own[1], noise[1], own[2], noise[2]])
    sims = own_photo_ssim(images, own)
    assert sims.shape == (3, 2)
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-6)
    assert (sims[:, 1] < 0.2).all()
    np.testing.assert_allclose(sims[:, 1], np.diag(ssim_matrix(noise, own)), atol=1e-6)
    with pytest.raises(ValueError, match="7 images do not split into 3 prompts"):
        own_photo_ssim(images[:1].repeat(7, 0), own)
