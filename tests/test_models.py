"""Layer discovery on the real Stable Diffusion architectures, built from config on the meta device."""

import pytest
import torch

from memprune.models import SD2_UNET_CONFIG as SD2_UNET
from memprune.models import SD15_UNET_CONFIG as SD15_UNET
from memprune.models import ffn_layers

WIDTHS = [1280, 1280, 2560, 2560, 5120, 5120, 5120, 5120, 5120, 5120, 2560, 2560, 2560, 1280, 1280, 1280]


@pytest.mark.parametrize("cfg", [SD15_UNET, SD2_UNET], ids=["sd15", "sd2"])
def test_sd_unet_has_16_ffn_layers_in_execution_order(cfg):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    layers = ffn_layers(unet)
    assert [lin.in_features for _, lin in layers] == WIDTHS
    names = [n for n, _ in layers]
    assert names[6] == "mid_block.attentions.0.transformer_blocks.0.ff.net.2"
    assert names == sorted(names)  # for SD the execution order is also the alphabetical one
    assert all(n.endswith("ff.net.2") for n in names)
