"""Layer discovery on the real Stable Diffusion architectures, built from config on the meta device."""

import pytest
import torch

from memprune.models import ffn_layers

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
)
SD2_UNET = dict(SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True)
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
