"""The testbed's model: CLIP's BPE tokenizer built offline, a small AutoencoderKL, an SD1.5-layout
UNet2DConditionModel, a CLIPTextModel, SD's schedulers, and their assembly as a StableDiffusionPipeline."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from memprune.formats.store import atomic_dir
from memprune.testbed.scenes import RESOLUTION


def build_tokenizer(bpe_path: Path, max_length: int = 32):
    """CLIP's real BPE tokenizer, built offline from the `bpe_simple_vocab_16e6.txt.gz` that CLIP/open_clip
    ship: the same byte-level vocabulary construction as CLIP's `SimpleTokenizer` (256 bytes, their `</w>`
    forms, one token per merge, then the two special tokens)."""
    from transformers import CLIPTokenizer

    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@dataclass
class ModelSpec:
    unet_channels: tuple[int, ...] = (48, 96)
    text_hidden: int = 64
    text_layers: int = 2
    vae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 8  # 4 channels lost the scenes' colours and shapes (measured: 30% read back)
    max_length: int = 20  # the longest testbed caption is 13 tokens with its start/end tokens


def build_vae(spec: ModelSpec):
    from diffusers import AutoencoderKL

    n = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=spec.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(spec.vae_channels), layers_per_block=1, norm_num_groups=16,
        sample_size=RESOLUTION,
    )


def build_unet(spec: ModelSpec, latent_size: int):
    """SD1.5's UNet layout in miniature: CrossAttn blocks with GEGLU feed-forwards in down, mid and up."""
    from diffusers import UNet2DConditionModel

    n = len(spec.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=spec.latent_channels, out_channels=spec.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(spec.unet_channels), layers_per_block=1, cross_attention_dim=spec.text_hidden,
        attention_head_dim=8, norm_num_groups=16,
    )


def build_text_encoder(spec: ModelSpec, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers, num_attention_heads=4, max_position_embeddings=spec.max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def make_train_scheduler():
    from diffusers import DDPMScheduler

    # Stable Diffusion's noise schedule.
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def make_sampling_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def assemble_pipeline(vae, unet, text_encoder, tokenizer, scheduler=None):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler or make_sampling_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def save_untrained_pipeline(out_dir: Path, bpe_path: Path, spec: ModelSpec | None = None, seed: int = 0,
                            prediction_type: str = "epsilon") -> Path:
    """A randomly initialised testbed-structured pipeline (for tests and dry runs), saved atomically."""
    import torch

    spec = spec or ModelSpec()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(bpe_path, spec.max_length)
    vae = build_vae(spec)
    latent = RESOLUTION // 2 ** (len(spec.vae_channels) - 1)
    pipe = assemble_pipeline(vae, build_unet(spec, latent), build_text_encoder(spec, tokenizer), tokenizer)
    pipe.scheduler.register_to_config(prediction_type=prediction_type)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)
