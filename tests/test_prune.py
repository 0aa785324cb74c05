"""Pruned checkpoints: equation 7 applied to the ff.net.2 weights, saved as only the edited weights + a
manifest, loaded back onto a hash-checked base, exported as a full diffusers pipeline."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BPE, REPO, snakemake, tiny_spec, write_config


def write_mask_store(model: Path, out: Path, density: float = 0.05, seed: int = 0) -> dict:
    """A mask store in `memprune masks`' layout (per-step masks and their union, bit-packed) with random union
    masks of the given density over the model's ff.net.2 layers. Returns {layer: bool union (out, in)}."""
    import xarray as xr

    from memprune.masks import load_unet
    from memprune.models import ffn_weights, weights_hash
    from memprune.store import write_zarr

    weights = ffn_weights(load_unet(model))
    rng = np.random.default_rng(seed)
    unions, data_vars = {}, {}
    for layer, w in weights.items():
        union = rng.random(tuple(w.shape)) < density
        per_step = np.stack([union, np.zeros_like(union)])  # step 0 holds the whole union, step 1 nothing
        dims = (f"{layer}.out", f"{layer}.in_packed")
        data_vars[layer] = (("step", *dims), np.packbits(per_step, axis=-1))
        data_vars[f"{layer}.union"] = (dims, np.packbits(union, axis=-1))
        unions[layer] = union
    ds = xr.Dataset(data_vars, coords={"step": [0, 1], "t": ("step", [999, 500])}, attrs={
        "layers": list(weights), "in_features": [int(w.shape[1]) for w in weights.values()],
        "sparsity": density, "tau": 2, "variant": "paper", "n_prompts": 3, "prompts": ["a", "b", "c"],
        "model": str(model), "base_weights_sha256": weights_hash(weights),
    })
    write_zarr(ds, out)
    return unions


@pytest.fixture(scope="module")
def pruned(tiny_model, tmp_path_factory):
    from memprune.cli import main

    wd = tmp_path_factory.mktemp("prune")
    unions = write_mask_store(tiny_model, wd / "masks.zarr")
    assert main(["prune", "--model", str(tiny_model), "--masks", str(wd / "masks.zarr"), "--out", str(wd / "ckpt")]) == 0
    return wd / "ckpt", unions


def test_prune_weights_zeroes_exactly_the_mask():
    from memprune.prune import prune_weights

    w = torch.arange(1, 13, dtype=torch.float32).reshape(3, 4)
    mask = np.zeros((3, 4), bool)
    mask[0, 1] = mask[2, 3] = True
    pruned, zeroed = prune_weights({"l": w}, {"l": mask})
    assert zeroed == {"l": 2}
    assert torch.equal(pruned["l"] == 0, torch.from_numpy(mask))
    assert torch.equal(pruned["l"][~torch.from_numpy(mask)], w[~torch.from_numpy(mask)])
    assert w[0, 1] == 2  # the input is not modified
    with pytest.raises(ValueError, match="shape"):
        prune_weights({"l": w}, {"l": mask.T})


def test_checkpoint_holds_only_the_edited_ffn_weights(pruned, tiny_model):
    from safetensors.torch import load_file

    from memprune.masks import load_unet
    from memprune.models import ffn_weights, weights_hash

    ckpt, unions = pruned
    assert sorted(p.name for p in ckpt.iterdir()) == ["manifest.json", "weights.safetensors"]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    tensors = load_file(str(ckpt / "weights.safetensors"))
    assert sorted(tensors) == sorted(f"{layer}.weight" for layer in unions)
    assert manifest["base_model"] == str(tiny_model)
    assert manifest["base_ffn_sha256"] == weights_hash(ffn_weights(load_unet(tiny_model)))
    assert manifest["zeroed"] == {layer: int(u.sum()) for layer, u in unions.items()}
    assert manifest["zeroed_total"] == sum(int(u.sum()) for u in unions.values())
    assert manifest["masks"]["sparsity"] == 0.05 and manifest["masks"]["tau"] == 2
    assert manifest["masks"]["variant"] == "paper" and manifest["memprune_version"]
    assert not list(ckpt.parent.glob(".ckpt.tmp-*"))


def test_round_trip_changes_only_the_masked_weights(pruned, tiny_model):
    from memprune.models import ffn_layers, load_pipeline
    from memprune.prune import load_pruned_pipeline

    ckpt, unions = pruned
    base = load_pipeline(tiny_model, "cpu", "float32")
    pipe = load_pruned_pipeline(ckpt, device="cpu", dtype="float32")
    base_ffn, pruned_ffn = dict(ffn_layers(base.unet)), dict(ffn_layers(pipe.unet))
    for layer, union in unions.items():
        mask = torch.from_numpy(union)
        w, w0 = pruned_ffn[layer].weight.detach(), base_ffn[layer].weight.detach()
        assert int(((w == 0) & (w0 != 0)).sum()) == int(mask.sum())  # zeroed count = mask count
        assert torch.all(w[mask] == 0)
        assert torch.equal(w[~mask], w0[~mask])  # non-masked weights identical to the base
    edited = {f"{layer}.weight" for layer in unions}
    for name, tensor in base.unet.state_dict().items():
        if name not in edited:
            assert torch.equal(tensor, pipe.unet.state_dict()[name]), name
    for part in ("text_encoder", "vae"):
        base_sd, sd = getattr(base, part).state_dict(), getattr(pipe, part).state_dict()
        assert all(torch.equal(base_sd[k], sd[k]) for k in base_sd)


def test_wrong_base_is_refused_with_both_hashes(pruned, tmp_path):
    from memprune.prompts import InputError
    from memprune.prune import load_pruned_pipeline, read_manifest
    from memprune.testbed import save_untrained_pipeline

    ckpt, _ = pruned
    other = save_untrained_pipeline(tmp_path / "other", BPE, tiny_spec(), seed=1)
    with pytest.raises(InputError) as err:
        load_pruned_pipeline(ckpt, base=other, device="cpu")
    message = str(err.value)
    assert str(ckpt) in message and read_manifest(ckpt)["base_ffn_sha256"] in message
    assert "sha256" in message and str(other) in message


def test_masks_of_another_model_are_refused_at_pruning(tiny_model, tmp_path):
    from memprune.cli import main
    from memprune.testbed import save_untrained_pipeline

    other = save_untrained_pipeline(tmp_path / "other", BPE, tiny_spec(), seed=1)
    write_mask_store(other, tmp_path / "masks.zarr")
    rc = main(["prune", "--model", str(tiny_model), "--masks", str(tmp_path / "masks.zarr"), "--out", str(tmp_path / "c")])
    assert rc == 2 and not (tmp_path / "c").exists()


def _copy(ckpt: Path, dest: Path) -> Path:
    shutil.copytree(ckpt, dest)
    return dest


def test_tampered_weights_are_refused(pruned, tmp_path):
    from memprune.prompts import InputError
    from memprune.prune import load_pruned_pipeline

    bad = _copy(pruned[0], tmp_path / "bad")
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[-3] ^= 0xFF  # one byte of the last tensor
    (bad / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupted or was edited"):
        load_pruned_pipeline(bad, device="cpu")


def test_refilled_pruned_entries_are_refused_even_with_a_matching_file_hash(pruned, tmp_path):
    """A checkpoint whose file hash was recomputed but whose weights lost their zeros is still refused."""
    from safetensors.torch import load_file, save_file

    from memprune.prompts import InputError
    from memprune.prune import file_sha256, load_pruned_pipeline

    bad = _copy(pruned[0], tmp_path / "bad")
    tensors = load_file(str(bad / "weights.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = torch.where(tensors[name] == 0, torch.ones_like(tensors[name]), tensors[name])
    save_file(tensors, str(bad / "weights.safetensors"))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["weights_sha256"] = file_sha256(bad / "weights.safetensors")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="zero entries"):
        load_pruned_pipeline(bad, device="cpu")


def test_unreadable_or_missing_checkpoint_is_an_input_error(pruned, tmp_path):
    from memprune.cli import main

    assert main(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    bad = _copy(pruned[0], tmp_path / "bad")
    (bad / "manifest.json").write_text("{not json")
    assert main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_export_loads_with_from_pretrained(pruned, tmp_path):
    from diffusers import StableDiffusionPipeline

    from memprune.cli import main
    from memprune.models import ffn_weights
    from memprune.prune import load_pruned_pipeline

    ckpt, _ = pruned
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    exported = StableDiffusionPipeline.from_pretrained(str(out), use_safetensors=True, safety_checker=None)
    expected = ffn_weights(load_pruned_pipeline(ckpt, device="cpu", dtype="float32").unet)
    got = ffn_weights(exported.unet)
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert json.loads((out / "memprune_manifest.json").read_text()) == json.loads((ckpt / "manifest.json").read_text())
    assert not list(out.rglob("*.bin"))  # safetensors only


def test_prune_rule_in_the_dag(tiny_model, tmp_path):
    """The prune rule runs after masks in a tiny workflow, and its checkpoint zeroes exactly the union mask."""
    import yaml

    from memprune.masks import read_masks
    from memprune.prune import load_pruned_pipeline

    mem = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:4]
    write_config(tmp_path, tiny_model, {"mem": mem}, {"m2": {"set": "mem", "n_subsets": 2, "size": 2, "seed": 0}})
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    tag = f"seed0_steps{cfg['sampling']['steps']}_g{cfg['sampling']['guidance']}_paper_sp0.05_tau3"
    target = f"results/tiny/pruned/{tag}/m2/1"
    snakemake(tmp_path, target)
    ckpt = tmp_path / target
    manifest = json.loads((ckpt / "manifest.json").read_text())
    _, _, _, unions, _ = read_masks(tmp_path / f"results/tiny/masks/{tag}/m2/1.zarr")
    counts = {layer: int(np.unpackbits(u).sum()) for layer, u in unions.items()}
    assert manifest["zeroed"] == counts and manifest["zeroed_total"] > 0
    assert (tmp_path / f"logs/tiny/prune/{tag}/m2_1.log").exists()
    assert (tmp_path / f"benchmarks/tiny/prune/{tag}/m2_1.tsv").exists()
    load_pruned_pipeline(ckpt, device="cpu")  # the base path recorded in the manifest resolves
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(tmp_path, "-n", target))
