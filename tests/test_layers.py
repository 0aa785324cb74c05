"""The per-model layers file (formats/layers.py): mask jobs read the observed weights and the UNet's hash from it
instead of loading the UNet; the masks are the same either way, and a bad or foreign file is refused by name."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import kill_while_running
from memprune import localize
from memprune.errors import InputError
from memprune.formats.edits import load_unet, unet_sha256
from memprune.formats.layers import observer_name, read_layers, write_layers
from memprune.localize.nemo import value_layers
from memprune.models import ffn_layers


@pytest.fixture(scope="module")
def layers_file(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("layers") / "layers.safetensors"
    write_layers(tiny_model, out)
    return out


def test_every_localizers_layers_and_the_hash_equal_the_unets(tiny_model, layers_file):
    unet = load_unet(tiny_model)
    for observes in {localize.get(n).observes for n in localize.names()}:
        weights, base_hash = read_layers(layers_file, observes)
        expected = observes(unet)
        assert list(weights) == [n for n, _ in expected]  # the observer's order, found by module type
        for name, lin in expected:
            assert weights[name].dtype == torch.float32 and torch.equal(weights[name], lin.weight.detach())
        assert base_hash == unet_sha256(unet)
    assert {observer_name(ffn_layers), observer_name(value_layers)} <= set(
        json.loads(__import__("safetensors").safe_open(str(layers_file), "pt").metadata()["observes"]))


def test_masks_from_the_file_equal_masks_from_the_unet(tiny_model, layers_file, tmp_path):
    from memprune.formats.masks import read_mask_set
    from memprune.localize.run import locate_collection

    # magnitude reads only |W| (no captures needed): the one path that differs is where the weights come from
    for layers in (None, layers_file):
        locate_collection("magnitude", {"sparsity": 0.05}, str(tiny_model), "c", 2, tmp_path / f"m{layers is None}",
                          layers=layers)
    for i in range(2):
        a, b = (read_mask_set(tmp_path / f"m{x}" / f"{i}.zarr") for x in (True, False))
        assert a.attrs == b.attrs and a.layers == b.layers
        assert all(np.array_equal(a.union[l], b.union[l]) for l in a.layers)


def test_a_bad_or_incomplete_file_is_refused_by_name(tmp_path, layers_file):
    bad = tmp_path / "layers.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(InputError, match=f"{bad}.*memprune layers"):
        read_layers(bad, ffn_layers)
    with pytest.raises(InputError, match="memprune layers"):
        read_layers(tmp_path / "missing.safetensors", ffn_layers)

    def elsewhere(unet):  # an observer the file was written without
        return []

    with pytest.raises(InputError, match="holds no layers observed by .*elsewhere"):
        read_layers(layers_file, elsewhere)


@pytest.mark.slow
def test_a_killed_layers_job_leaves_no_file_and_a_rerun_writes_it_whole(tmp_path):
    from conftest import BPE
    from memprune.testbed.model import ModelSpec, save_untrained_pipeline

    # wide enough (about 40 MB of observed weights) that the write lasts long enough to be caught in the act
    model = save_untrained_pipeline(tmp_path / "wide", BPE, ModelSpec(unet_channels=(256, 512), text_hidden=32,
                                                                      vae_channels=(16, 16, 16), max_length=20))
    out = tmp_path / "layers.safetensors"
    cmd = [sys.executable, "-m", "memprune", "layers", "--model", str(model), "--out", str(out)]
    kill_while_running(cmd, out)
    assert not out.exists()
    subprocess.run(cmd, check=True, capture_output=True)
    write_layers(model, tmp_path / "reference.safetensors")
    # the same tensors and metadata (safetensors orders a header's metadata by hash: the bytes may differ)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as a, safe_open(str(tmp_path / "reference.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
