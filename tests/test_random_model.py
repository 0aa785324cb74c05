"""`memprune make-random-model`: SD1.5's and SD2's published architectures with random weights.

Costs (2 shared CPU cores): the meta-device checks ~5 s; the small round trip (published layout, narrow widths)
~10 s; the slow test (the real SD1.5 written in float16 by the CLI, 2.1 GB, read back in float32, one capture
step at 64 px) ~80 s and ~7 GB of memory.
"""

import json

import numpy as np
import pytest
import torch

from conftest import BPE

from memprune.localize.nemo import value_layers
from memprune.models import SD2_UNET_CONFIG, SD15_UNET_CONFIG, ffn_layers
from memprune.random_model import (ARCHITECTURES, _init_values, architecture_hash, pipeline_hash, published_hash,
                                   write_random_model)

WIDTHS = [1280, 1280, 2560, 2560, 5120, 5120, 5120, 5120, 5120, 5120, 2560, 2560, 2560, 1280, 1280, 1280]
NEMO_CHANNELS = [320, 320, 640, 640, 1280, 1280, 1280]  # NeMo's 7 attn2.to_v layers on SD1.x: 5,760 channels
# narrow widths, the published layout (4 blocks, 2 layers each, cross-attention in the first 3): the same
# 16 FFN and 7 value layers at a fraction of the cost
SMALL = {"unet": {"block_out_channels": [32, 32, 64, 64], "attention_head_dim": 8, "cross_attention_dim": 32,
                  "sample_size": 8},
         "vae": {"block_out_channels": [32, 32, 32, 32], "sample_size": 64},
         "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "projection_dim": 32}}


def _meta_networks(arch: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = ARCHITECTURES[arch]
    with torch.device("meta"):
        return (UNet2DConditionModel(**spec["unet"]), AutoencoderKL(**spec["vae"]),
                CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])))


@pytest.mark.parametrize("arch", ["sd15", "sd2"])
def test_published_architectures_have_the_papers_layers_and_hash(arch):
    unet, vae, text = _meta_networks(arch)
    assert [lin.in_features for _, lin in ffn_layers(unet)] == WIDTHS
    values = value_layers(unet)
    assert [lin.out_features for _, lin in values] == NEMO_CHANNELS and sum(NEMO_CHANNELS) == 5760
    assert all(n.endswith("attn2.to_v") for n, _ in values) and values[-1][0].startswith("mid_block.")
    assert text.config.hidden_size == {"sd15": 768, "sd2": 1024}[arch]
    assert unet.config.cross_attention_dim == text.config.hidden_size
    configs = {"unet": dict(unet.config), "vae": dict(vae.config), "text_encoder": text.config.to_dict()}
    assert architecture_hash(configs) == published_hash(arch)
    # bookkeeping keys do not count; an architecture key does
    assert architecture_hash({**configs, "unet": {**configs["unet"], "_diffusers_version": "0.1.0",
                                                  "_name_or_path": "x"}}) == published_hash(arch)
    assert architecture_hash({**configs, "unet": {**configs["unet"], "cross_attention_dim": 7}}) != published_hash(arch)


def test_the_two_architectures_differ_where_published_and_agree_with_models_py():
    from diffusers import UNet2DConditionModel

    assert published_hash("sd15") != published_hash("sd2")
    sd15, sd2 = ARCHITECTURES["sd15"], ARCHITECTURES["sd2"]
    assert sd15["text_encoder"]["hidden_act"] == "quick_gelu" and sd2["text_encoder"]["hidden_act"] == "gelu"
    assert sd2["text_encoder"]["num_hidden_layers"] == 23 and sd2["unet"]["use_linear_projection"]
    assert sd15["scheduler"][0] == "PNDMScheduler" and sd2["scheduler"][1]["prediction_type"] == "v_prediction"
    for ours, theirs in ((sd15["unet"], SD15_UNET_CONFIG), (sd2["unet"], SD2_UNET_CONFIG)):
        assert _init_values(UNet2DConditionModel, ours) == _init_values(UNet2DConditionModel, theirs)


@pytest.mark.parametrize("arch", ["sd15", "sd2"])
def test_written_model_loads_back_with_its_hash_tokenizer_scheduler_and_seed(arch, tmp_path):
    from safetensors.torch import load_file

    from memprune.models import load_pipeline

    out = write_random_model(arch, tmp_path / "m", seed=0, dtype="float32", bpe_path=BPE, overrides=SMALL)
    record = json.loads((out / "memprune_random_model.json").read_text())
    pipe = load_pipeline(out, "cpu", "float32")
    assert pipeline_hash(pipe) == record["architecture_hash"] != published_hash(arch)  # narrowed: not the published
    assert len(ffn_layers(pipe.unet)) == 16 and len(value_layers(pipe.unet)) == 7
    ids = pipe.tokenizer(["a photo"], padding="max_length").input_ids[0]
    pad = {"sd15": 49407, "sd2": 0}[arch]  # SD2's tokenizer pads with "!"
    assert ids[:4] == [49406, 320, 1125, 49407] and len(ids) == 77 and set(ids[4:]) == {pad}
    expected = {"sd15": ("PNDMScheduler", "epsilon"), "sd2": ("DDIMScheduler", "v_prediction")}[arch]
    assert (type(pipe.scheduler).__name__, pipe.scheduler.config.prediction_type) == expected
    again = write_random_model(arch, tmp_path / "again", seed=0, dtype="float32", bpe_path=BPE, overrides=SMALL)
    other = write_random_model(arch, tmp_path / "other", seed=1, dtype="float32", bpe_path=BPE, overrides=SMALL)
    weights = [load_file(str(d / "unet/diffusion_pytorch_model.safetensors")) for d in (out, again, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


@pytest.mark.slow
def test_cli_writes_real_sd15_that_captures_at_64px(tmp_path):
    from memprune.capture.hooks import capture
    from memprune.cli import main
    from memprune.models import load_pipeline
    from memprune.sampling import SamplingConfig

    assert main(["make-random-model", "--arch", "sd15", "--out", str(tmp_path / "sd15")]) == 0
    pipe = load_pipeline(tmp_path / "sd15", "cpu", "float32")
    assert pipeline_hash(pipe) == published_hash("sd15")
    assert pipe.unet.dtype == torch.float32 and pipe.unet.config.sample_size == 64
    values = value_layers(pipe.unet)
    assert [lin.out_features for _, lin in values] == NEMO_CHANNELS
    cap = capture(pipe, ["a photo of a cat"], 0,
                  SamplingConfig(steps=1, guidance=7.5, batch_size=1, height=64, width=64))
    assert cap.layers == [n for n, _ in ffn_layers(pipe.unet)] and len(cap.layers) == 16
    for name, width in zip(cap.layers, WIDTHS):
        assert cap.sumsq[name].shape == (1, len(cap.timesteps), 2, width) and np.isfinite(cap.sumsq[name]).all()
