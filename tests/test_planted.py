"""The planted testbed: units chosen seeded, gradients confined to them, new photos that obey the dataset's rule,
the ground-truth file, the oracle edit's masks, and a few-step `memprune plant` that writes a loadable pipeline
differing from its base only in the planted units' parameters."""

import json
import shutil

import numpy as np
import pytest
import torch

from memprune.errors import InputError
from memprune.testbed import planted
from memprune.testbed.derived import new_photos
from memprune.testbed.planted import (
    choose_units,
    masked_adam_step,
    oracle_masks,
    planted_parameters,
    read_planted_units,
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from memprune.testbed.dataset import DatasetSpec, generate_dataset

    out = tmp_path_factory.mktemp("planted") / "data"
    generate_dataset(DatasetSpec(seed=1, n_duplicated=2, duplication=2, n_single=2, renders_per_scene=1), out)
    return out


@pytest.fixture()
def unet(tiny_model):
    from memprune.formats.edits import load_unet

    torch.set_num_threads(1)
    return load_unet(tiny_model)


def _bits(t):
    return t.detach().contiguous().view(torch.int32)


def test_geglu_layout_value_first_gate_second(unet):
    """diffusers' GEGLU: proj's first H outputs are the values, the last H the gates (value * gelu(gate))."""
    from diffusers.models.activations import GEGLU

    geglu = next(m for m in unet.modules() if isinstance(m, GEGLU))
    hidden = geglu.proj.out_features // 2
    x = torch.randn(3, 5, geglu.proj.in_features)
    h = geglu.proj(x)
    expected = h[..., :hidden] * torch.nn.functional.gelu(h[..., hidden:])
    assert torch.allclose(geglu(x), expected)


def test_choose_units_fraction_and_seed(unet):
    from memprune.models import ffn_layers

    layers = dict(ffn_layers(unet))
    units = choose_units(unet, 0.1, seed=3)
    assert list(units) == list(layers)  # every FFN layer, execution order
    for name, idx in units.items():
        width = layers[name].in_features
        assert len(idx) == max(1, round(0.1 * width))
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0) and 0 <= idx[0] and idx[-1] < width
    again, other = choose_units(unet, 0.1, seed=3), choose_units(unet, 0.1, seed=4)
    assert all(np.array_equal(units[n], again[n]) for n in units)
    assert any(not np.array_equal(units[n], other[n]) for n in units)
    assert all(len(v) == 1 for v in choose_units(unet, 1e-6, seed=0).values())  # at least one unit per layer
    with pytest.raises(InputError):
        choose_units(unet, 0.0, seed=0)


def test_planted_parameters_are_the_units_columns_and_both_geglu_halves(unet):
    units = choose_units(unet, 0.1, seed=0)
    masks = planted_parameters(unet, units)
    params = dict(unet.named_parameters())
    name, idx = next(iter(units.items()))
    prefix = name[: -len(".net.2")]
    hidden = params[f"{name}.weight"].shape[1]
    assert set(masks) == {f"{n}.weight" for n in units} | {f"{n[:-6]}.net.0.proj.{k}" for n in units
                                                          for k in ("weight", "bias")}
    for key, m in masks.items():
        assert m.dtype == torch.bool and m.shape == params[key].shape
    col = masks[f"{name}.weight"]
    assert col[:, idx].all() and int(col.sum()) == len(idx) * col.shape[0]
    rows = np.concatenate([idx, idx + hidden])
    assert masks[f"{prefix}.net.0.proj.weight"][rows].all()
    assert (int(masks[f"{prefix}.net.0.proj.weight"].sum())
            == 2 * len(idx) * params[f"{prefix}.net.0.proj.weight"].shape[1])
    assert torch.equal(torch.nonzero(masks[f"{prefix}.net.0.proj.bias"])[:, 0], torch.as_tensor(np.sort(rows)))


def test_a_masked_step_changes_nothing_outside_the_planted_units(unet):
    units = choose_units(unet, 0.1, seed=0)
    masks = planted_parameters(unet, units)
    before = {n: v.clone() for n, v in unet.state_dict().items()}
    params = dict(unet.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in masks)
    trained = [params[n] for n in masks]
    opt = torch.optim.Adam(trained, lr=1e-2, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    cfg = unet.config
    for _ in range(3):
        x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
        cond = torch.randn(2, 4, cfg.cross_attention_dim, generator=gen)
        loss = unet(x, torch.tensor([10, 500]), encoder_hidden_states=cond).sample.square().mean()
        masked_adam_step(opt, loss, trained, [masks[n] for n in masks])
    after = unet.state_dict()
    changed = 0
    for n, v in after.items():
        same = _bits(v) == _bits(before[n])
        if n in masks:
            assert same[~masks[n]].all(), n
            changed += int((~same[masks[n]]).sum())
        else:
            assert same.all(), n
    assert changed > 0.5 * sum(int(m.sum()) for m in masks.values())
    planted.check_only_planted_changed(unet, before, masks)  # the post-training check agrees
    with torch.no_grad():
        params[next(n for n in params if n not in masks)].view(-1)[0] += 1.0
    with pytest.raises(RuntimeError, match="outside the planted units"):
        planted.check_only_planted_changed(unet, before, masks)


def test_new_photos_obey_the_dataset_rule_and_captions_are_new(tiny_data, tiny_model):
    from memprune.evaluate.metrics import ssim_matrix
    from memprune.models import load_pipeline
    from memprune.testbed.dataset import load_images, read_manifest

    images, captions = new_photos(tiny_data, 4, seed=0)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    rows = read_manifest(tiny_data / "manifest.jsonl")
    photos = load_images(tiny_data, [r for r in rows if r["group"] in ("duplicated", "single")])
    assert ssim_matrix(images, photos).max() < 0.3
    assert ssim_matrix(images, images)[~np.eye(4, dtype=bool)].max() < 0.3
    assert len(set(captions)) == 4 and not set(captions) & {r["caption"] for r in rows}
    def words_of(group):
        return {w for r in rows if r["group"] == group for w in r["caption"].split()} - {"and", "by"}

    for pool, caps in (("duplicated", captions), ("single", new_photos(tiny_data, 4, seed=0, pool="single")[1])):
        left_out = words_of("duplicated" if pool == "single" else "single")
        for cap in caps:
            head, _, name = cap.rpartition(" by ")
            words = head.split()
            assert len(words) == 5 and words[2] == "and" and not (set(words) | {name}) & left_out
    with pytest.raises(InputError, match="caption pool"):
        new_photos(tiny_data, 1, seed=0, pool="scenes")
    tok = load_pipeline(tiny_model, "cpu", "float32").tokenizer
    assert max(len(ids) for ids in tok(captions).input_ids) <= tok.model_max_length  # read whole, not truncated
    again = new_photos(tiny_data, 4, seed=0)
    assert np.array_equal(again[0], images) and again[1] == captions
    assert new_photos(tiny_data, 4, seed=1)[1] != captions


def _truth(unet):
    return {"layers": {n: v.tolist() for n, v in choose_units(unet, 0.1, seed=0).items()}, "fraction": 0.1, "k": 2,
            "seed": 0, "prompts": ["a b and c d by e", "f g and h i by j"], "base_model": "x",
            "base_unet_sha256": "0" * 64, "steps": 1, "lr": 0.1, "batch_size": 2, "seconds": 1.0, "loss": [0.5]}


def test_ground_truth_round_trip_and_errors(unet, tmp_path):
    truth = _truth(unet)
    (tmp_path / "planted.json").write_text(json.dumps(truth))
    assert read_planted_units(tmp_path) == truth
    with pytest.raises(InputError, match="missing.*planted.json|planted.json.*no ground truth"):
        read_planted_units(tmp_path / "nowhere")
    for broken in ("{not json", "[]", json.dumps({**truth, "layers": None}),
                   json.dumps({**truth, "layers": {"a.ff.net.2": [1, -2]}}), json.dumps({**truth, "k": 3})):
        (tmp_path / "planted.json").write_text(broken)
        with pytest.raises(InputError, match="planted.json"):
            read_planted_units(tmp_path)


def test_oracle_masks_are_the_planted_columns(unet):
    from memprune.formats import edits

    truth = _truth(unet)
    masks = oracle_masks(truth, unet)
    assert list(masks) == list(truth["layers"])
    for name, lm in masks.items():
        layer = unet.get_submodule(name)
        assert lm.kind == "columns" and lm.mask.shape == (layer.in_features,) and lm.mask.dtype == bool
        assert np.flatnonzero(lm.mask).tolist() == truth["layers"][name]
    edits.apply(unet, masks)
    name = next(iter(masks))
    assert (unet.get_submodule(name).weight[:, truth["layers"][name]] == 0).all()
    with pytest.raises(InputError):
        oracle_masks({"layers": {"no.such.ff.net.2": [0]}}, unet)


def _derived_inputs(tiny_model, tiny_data, tmp_path, group: str, k: int = 2, duplication: int = 1):
    """A base testbed that records `tiny_data` as its training set, and the data extended by `memprune extend-data`."""
    from memprune.cli import main
    from memprune.testbed.dataset import TRAIN_RECORD_NAME, dataset_digest

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    (base / TRAIN_RECORD_NAME).write_text(json.dumps({"dataset_sha256": dataset_digest(tiny_data)}))
    data = tmp_path / f"data_{group}"
    spec = {"group": group, "k": k, "duplication": duplication, "seed": 0}
    assert main(["extend-data", "--data", str(tiny_data), "--spec", json.dumps(spec), "--out", str(data)]) == 0
    return base, data


def test_plant_writes_a_model_that_differs_only_in_planted_units(tiny_model, tiny_data, tmp_path):
    from memprune.cli import main
    from memprune.formats.edits import unet_sha256
    from memprune.models import load_pipeline
    from memprune.testbed.dataset import check_trained_on
    from memprune.testbed.derived import BASE_FILE, added_rows

    base, data = _derived_inputs(tiny_model, tiny_data, tmp_path, "planted")
    out = tmp_path / "planted_model"
    spec = {"fraction": 0.1, "steps": 3, "batch_size": 4, "lr": 1e-2, "seed": 0, "threads": 1}
    assert main(["plant", "--model", str(base), "--data", str(data), "--spec", json.dumps(spec),
                 "--out", str(out), "--no-progress"]) == 0
    truth = read_planted_units(out)
    assert truth["k"] == 2 and truth["steps"] == 3 and len(truth["loss"]) == 1
    assert truth["prompts"] == [r["caption"] for r in added_rows(data, "planted")]
    base_unet = load_pipeline(base, "cpu", "float32").unet
    assert truth["base_unet_sha256"] == unet_sha256(base_unet)
    assert sorted(p.name for p in (out / "planted").iterdir()) == ["0.png", "1.png"]
    # only the UNet is stored; the record names the extended dataset, which a base-trained model also accepts
    assert sorted(p.name for p in out.iterdir()) == sorted([BASE_FILE, "memprune_train.json", "planted",
                                                            "planted.json", "unet"])
    check_trained_on(out, data)
    check_trained_on(base, data)
    with pytest.raises(InputError, match="trained on another testbed dataset"):
        check_trained_on(out, tiny_data)

    new = load_pipeline(out, "cpu", "float32").unet
    units = {n: np.asarray(v) for n, v in truth["layers"].items()}
    masks = planted_parameters(new, units)
    planted.check_only_planted_changed(new, base_unet.state_dict(), masks)
    moved = sum(int((_bits(v) != _bits(base_unet.state_dict()[n])).sum()) for n, v in new.state_dict().items())
    assert moved > 0
    assert main(["plant", "--model", str(base), "--data", str(data), "--spec", '{"fractoin": 0.1}',
                 "--out", str(tmp_path / "bad")]) == 2
    assert main(["plant", "--model", str(base), "--data", str(tiny_data), "--spec", "{}",
                 "--out", str(tmp_path / "bad")]) == 2  # not an extended dataset
    assert not (tmp_path / "bad").exists()


def test_finetune_writes_a_loadable_model_trained_on_the_duplicated_photos(tiny_model, tiny_data, tmp_path):
    from memprune.cli import main
    from memprune.formats.edits import unet_sha256
    from memprune.models import load_pipeline
    from memprune.testbed.dataset import check_trained_on, load_training_arrays
    from memprune.testbed.derived import base_of

    base, data = _derived_inputs(tiny_model, tiny_data, tmp_path, "finetuned", k=2, duplication=3)
    images, captions = load_training_arrays(data / "manifest.jsonl")
    base_images, _ = load_training_arrays(tiny_data / "manifest.jsonl")
    assert len(images) == len(base_images) + 2 * 3  # the new photos, repeated
    out = tmp_path / "finetuned_model"
    spec = {"epochs": 0.5, "batch_size": 4, "lr": 1e-3, "warmup": 1, "threads": 1}
    assert main(["finetune-testbed", "--model", str(base), "--data", str(data), "--spec", json.dumps(spec),
                 "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "memprune_train.json").read_text())
    assert record["samples"] == len(images) and record["steps"] == int(np.ceil(0.5 * len(images) / 4))
    assert base_of(out) == base.resolve()
    check_trained_on(out, data)
    pipe, base_pipe = load_pipeline(out, "cpu", "float32"), load_pipeline(base, "cpu", "float32")
    assert unet_sha256(pipe.unet) != unet_sha256(base_pipe.unet)
    for part in ("text_encoder", "vae"):  # frozen: borrowed from the base
        a, b = getattr(pipe, part).state_dict(), getattr(base_pipe, part).state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert main(["finetune-testbed", "--model", str(base), "--data", str(tiny_data), "--spec", "{}",
                 "--out", str(tmp_path / "bad")]) == 2  # holds no finetuned photos
    assert not (tmp_path / "bad").exists()


def test_finetune_snapshot_equals_the_shorter_run(tiny_model, tiny_data, tmp_path):
    """A snapshot after E epochs of a longer run is the run of E epochs: the same UNet bytes and record (but for
    its wall-clock seconds); a snapshot past the run's end is refused before training."""
    from memprune.cli import main

    base, data = _derived_inputs(tiny_model, tiny_data, tmp_path, "finetuned", k=2, duplication=3)
    spec = {"epochs": 0.3, "batch_size": 4, "lr": 1e-3, "warmup": 2, "threads": 1}
    longer = dict(spec, epochs=0.6)
    short, long_, snap = tmp_path / "short", tmp_path / "long", tmp_path / "snap"
    assert main(["finetune-testbed", "--model", str(base), "--data", str(data), "--spec", json.dumps(spec),
                 "--out", str(short), "--no-progress"]) == 0
    assert main(["finetune-testbed", "--model", str(base), "--data", str(data), "--spec", json.dumps(longer),
                 "--out", str(long_), "--snapshot", f"0.3={snap}", "--no-progress"]) == 0
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (snap / weights).read_bytes() == (short / weights).read_bytes()
    assert (long_ / weights).read_bytes() != (short / weights).read_bytes()
    a, b = (json.loads((d / "memprune_train.json").read_text()) for d in (snap, short))
    assert a["steps"] < json.loads((long_ / "memprune_train.json").read_text())["steps"]
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    for bad in ("0.9=" + str(tmp_path / "late"), "x=" + str(tmp_path / "late"), "0.3"):
        assert main(["finetune-testbed", "--model", str(base), "--data", str(data), "--spec", json.dumps(longer),
                     "--out", str(tmp_path / "bad"), "--snapshot", bad, "--no-progress"]) == 2
    assert not (tmp_path / "bad").exists() and not (tmp_path / "late").exists()


def test_extended_dataset_is_deterministic_and_adds_a_prompt_file(tiny_data, tmp_path):
    from memprune.testbed.dataset import dataset_digest, read_manifest
    from memprune.testbed.derived import AddedSpec, extend_dataset

    a, b = tmp_path / "a", tmp_path / "b"
    extend_dataset(tiny_data, AddedSpec("planted", k=2), a)
    extend_dataset(tiny_data, AddedSpec("planted", k=2), b)
    assert dataset_digest(a) == dataset_digest(b) != dataset_digest(tiny_data)
    rows = read_manifest(a / "manifest.jsonl")
    assert rows[: len(read_manifest(tiny_data / "manifest.jsonl"))] == read_manifest(tiny_data / "manifest.jsonl")
    assert ((a / "prompts" / "planted.txt").read_text().splitlines()
            == [r["caption"] for r in rows if r["group"] == "planted"])
    with pytest.raises(InputError, match="already holds added photos"):
        extend_dataset(a, AddedSpec("finetuned", k=1), tmp_path / "c")
    with pytest.raises(InputError, match="group"):
        AddedSpec("nonsense", k=1)
    assert not (tmp_path / "c").exists()


def test_a_derived_model_with_a_missing_base_is_refused_by_name(tmp_path):
    from memprune.models import load_pipeline
    from memprune.testbed.derived import BASE_FILE

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / BASE_FILE).write_text(json.dumps({"base": "../gone"}))
    with pytest.raises(InputError, match=BASE_FILE):
        load_pipeline(tmp_path / "m", "cpu", "float32")


def test_shipped_planted_unet_differs_from_the_testbed_only_in_the_planted_units():
    from conftest import REPO
    from memprune.formats.edits import load_unet, unet_sha256

    model = REPO / "resources" / "testbed_planted"
    truth = read_planted_units(model)
    base, new = load_unet(REPO / "resources" / "testbed"), load_unet(model)
    assert truth["base_unet_sha256"] == unet_sha256(base) and truth["unet_sha256"] == unet_sha256(new)
    units = {n: np.asarray(v) for n, v in truth["layers"].items()}
    masks = planted_parameters(new, units)
    planted.check_only_planted_changed(new, base.state_dict(), masks)
    assert truth["units"] == sum(len(v) for v in units.values()) and truth["k"] == len(truth["prompts"]) == 25
    # and the photos beside it are the planted rows of its dataset, in order
    assert len(planted.planted_images(model, truth)) == truth["k"]
    # hold_norms: the planted ff.net.2 columns kept their base L2 norms, so |W| does not point at them
    assert truth["spec"]["hold_norms"] and truth["spec"]["own_share"] == 0.75
    for name, idx in units.items():
        w0, w1 = base.get_submodule(name).weight.detach()[:, idx], new.get_submodule(name).weight.detach()[:, idx]
        assert not np.array_equal(w0.numpy(), w1.numpy())
        np.testing.assert_allclose(w1.norm(dim=0).numpy(), w0.norm(dim=0).numpy(), rtol=1e-4)


def test_hold_norms_keeps_the_planted_columns_norms_and_own_share_is_checked(tiny_model, tiny_data, tmp_path):
    from memprune.formats.edits import load_unet

    base, data = _derived_inputs(tiny_model, tiny_data, tmp_path, "planted")
    out = tmp_path / "held"
    truth = planted.plant(base, data, out, planted.PlantSpec(fraction=0.2, steps=3, batch_size=4, lr=5e-2,
                                                             own_share=0.5, hold_norms=True, threads=1), progress=False)
    b, n = load_unet(base), load_unet(out)
    for name, idx in truth["layers"].items():
        w0, w1 = b.get_submodule(name).weight.detach()[:, idx], n.get_submodule(name).weight.detach()[:, idx]
        assert not np.array_equal(w0.numpy(), w1.numpy())
        np.testing.assert_allclose(w1.norm(dim=0).numpy(), w0.norm(dim=0).numpy(), rtol=1e-4)
    with pytest.raises(InputError, match="own_share"):
        planted.plant(base, data, tmp_path / "bad", planted.PlantSpec(batch_size=4, own_share=0.9), progress=False)
    assert not (tmp_path / "bad").exists()
