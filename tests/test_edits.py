"""The common edit path: masks over any named Linear layer (weights, output channels, input features) applied,
saved as only the edited tensors + a manifest, loaded back onto a hash-checked base, exported as a pipeline;
a fine-tuned UNet fits the same format."""

import json
import shutil

import numpy as np
import pytest
import torch

from memprune.formats.edits import LayerMask, apply, load_edited_pipeline, load_unet, read_manifest, unet_sha256
from memprune.errors import InputError


def _layers(model):
    from memprune.models import ffn_layers

    unet = load_unet(model)
    ffn = ffn_layers(unet)[0][0]
    to_v = next(n for n, _ in unet.named_modules() if n.endswith("attn2.to_v"))
    return unet, ffn, to_v


@pytest.fixture(scope="module")
def edits(tiny_model, tmp_path_factory):
    """Checkpoints of a weight mask (ff.net.2), a rows mask (to_v and ff.net.2 rows, which have a bias) and a
    columns mask, with the masks used."""
    from memprune.formats.edits import write_masked_edit

    wd = tmp_path_factory.mktemp("edits")
    unet, ffn, to_v = _layers(tiny_model)
    state = unet.state_dict()
    rng = np.random.default_rng(0)
    out_f, in_f = state[f"{ffn}.weight"].shape
    masks = {
        "weight": {ffn: LayerMask("weight", rng.random((out_f, in_f)) < 0.1)},
        "rows": {to_v: LayerMask("rows", np.arange(state[f"{to_v}.weight"].shape[0]) % 5 == 0),
                 ffn: LayerMask("rows", np.arange(out_f) < 3)},
        "columns": {ffn: LayerMask("columns", np.arange(in_f) % 7 == 1)},
    }
    ckpts = {kind: wd / kind for kind in masks}
    for kind, m in masks.items():
        write_masked_edit(tiny_model, m, ckpts[kind], "test", {"kind": kind})
    return ckpts, masks


@pytest.mark.parametrize("kind", ["weight", "rows", "columns"])
def test_round_trip_zeroes_exactly_the_mask_and_nothing_else(edits, tiny_model, kind):
    ckpts, masks = edits
    base = load_unet(tiny_model).state_dict()
    edited = load_edited_pipeline(ckpts[kind], device="cpu", dtype="float32").unet.state_dict()
    touched = set()
    for layer, lm in masks[kind].items():
        w = base[f"{layer}.weight"]
        full = torch.from_numpy(np.ascontiguousarray(lm.full(tuple(w.shape))))
        assert torch.equal(edited[f"{layer}.weight"], w.masked_fill(full, 0.0))
        touched.add(f"{layer}.weight")
        if kind == "rows" and f"{layer}.bias" in base:
            assert torch.equal(edited[f"{layer}.bias"],
                               base[f"{layer}.bias"].masked_fill(torch.from_numpy(lm.mask), 0.0))
            touched.add(f"{layer}.bias")
    assert all(torch.equal(edited[k], v) for k, v in base.items() if k not in touched)
    manifest = read_manifest(ckpts[kind])
    assert set(manifest["tensors"]) == touched and manifest["base_unet_sha256"] == unet_sha256(load_unet(tiny_model))
    assert manifest["zeroed"] == {layer: int(lm.full(tuple(base[f"{layer}.weight"].shape)).sum())
                                  for layer, lm in masks[kind].items()}


def test_apply_refuses_a_mask_of_the_wrong_shape_or_layer(tiny_model):
    unet, ffn, _ = _layers(tiny_model)
    with pytest.raises(ValueError, match="does not fit"):
        apply(unet, {ffn: LayerMask("rows", np.ones(3, bool))})
    with pytest.raises(InputError, match="not a Linear layer"):
        apply(unet, {"no.such.layer": LayerMask("rows", np.ones(3, bool))})


def test_a_fine_tuned_unet_fits_the_same_manifest(tiny_model, tmp_path):
    from memprune.formats.edits import write_weights_edit

    unet = load_unet(tiny_model)
    with torch.no_grad():
        unet.conv_in.weight.add_(0.5)
    manifest = write_weights_edit(tiny_model, unet, tmp_path / "ft", "finetune", {"steps": 1})
    assert manifest["kind"] == "weights" and list(manifest["tensors"]) == ["conv_in.weight"]
    got = load_edited_pipeline(tmp_path / "ft", device="cpu", dtype="float32").unet
    assert torch.equal(got.conv_in.weight, unet.conv_in.weight)


def test_wrong_base_is_refused_with_both_hashes(edits, tiny_model, tmp_path):
    ckpts, _ = edits
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    unet = load_unet(other)
    with torch.no_grad():
        unet.conv_out.bias.add_(1.0)
    unet.save_pretrained(other / "unet", safe_serialization=True)
    with pytest.raises(InputError, match="edited from a UNet with sha256"):
        load_edited_pipeline(ckpts["weight"], base=other, device="cpu")


def test_tampered_or_refilled_checkpoints_are_refused(edits, tmp_path):
    from safetensors.torch import load_file, save_file

    from memprune.formats.edits import file_sha256

    ckpts, _ = edits
    bad = tmp_path / "bad"
    shutil.copytree(ckpts["weight"], bad)
    tensors = load_file(str(bad / "weights.safetensors"))
    key = next(iter(tensors))
    tensors[key] = torch.ones_like(tensors[key])  # the zeroed entries refilled
    save_file(tensors, str(bad / "weights.safetensors"))
    with pytest.raises(InputError, match="sha256"):
        load_edited_pipeline(bad, device="cpu")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["weights_sha256"] = file_sha256(bad / "weights.safetensors")  # a matching hash does not hide it
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="fewer than"):
        load_edited_pipeline(bad, device="cpu")
    (bad / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="unreadable manifest"):
        load_edited_pipeline(bad, device="cpu")
    with pytest.raises(InputError, match="no manifest.json"):
        load_edited_pipeline(tmp_path / "nothing", device="cpu")


def test_export_loads_with_from_pretrained(edits, tmp_path):
    from diffusers import StableDiffusionPipeline

    from memprune.cli import main

    ckpts, _ = edits
    assert main(["export", "--checkpoint", str(ckpts["rows"]), "--out", str(tmp_path / "full")]) == 0
    exported = StableDiffusionPipeline.from_pretrained(str(tmp_path / "full"), safety_checker=None).unet.state_dict()
    expected = load_edited_pipeline(ckpts["rows"], device="cpu", dtype="float32").unet.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in expected.items())
    assert not list((tmp_path / "full").rglob("*.bin"))  # safetensors only


def test_a_manifest_names_its_base_by_no_absolute_path_and_loads_from_anywhere(edits, tiny_model, tmp_path,
                                                                               monkeypatch):
    """The tiny model is given by an absolute path; the manifest holds only relative names (and the UNet hash that
    loading checks), loads from another working directory, and finds the base beside a moved copy of the tree."""
    from memprune.formats.edits import _default_base

    ckpts, masks = edits
    manifest = read_manifest(ckpts["weight"])

    def strings(node):
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    assert tiny_model.is_absolute() and not [s for s in strings(manifest) if s.startswith("/")]
    assert "base_model_path" not in manifest
    monkeypatch.chdir(tmp_path)  # `base_model` (relative to where it was written) no longer resolves from here
    expected = load_unet(tiny_model).state_dict()
    edited = load_edited_pipeline(ckpts["weight"], device="cpu", dtype="float32").unet.state_dict()
    (layer, lm), = masks["weight"].items()
    w = expected[f"{layer}.weight"]
    assert torch.equal(edited[f"{layer}.weight"], w.masked_fill(torch.from_numpy(lm.full(tuple(w.shape))), 0.0))
    # the checkpoint and its base moved together keep finding each other
    common = tiny_model.parent.parent
    moved = tmp_path / "moved"
    for path in (tiny_model, ckpts["weight"]):
        shutil.copytree(path, moved / path.relative_to(common))
    moved_ckpt = moved / ckpts["weight"].relative_to(common)
    assert _default_base(read_manifest(moved_ckpt), moved_ckpt) == str(moved / tiny_model.relative_to(common))
