"""Stable Diffusion's architectures with random weights: `memprune make-random-model --arch sd15|sd2 --out DIR`.

The UNet, VAE and text-encoder configs below are those of the published pipelines
(stable-diffusion-v1-5/stable-diffusion-v1-5, the maintained copy of runwayml/stable-diffusion-v1-5, gone from the
hub since 2024; and stabilityai/stable-diffusion-2: the keys their config.json files set; every other key is the
class default), with their schedulers' configs. The text encoders: CLIP ViT-L/14's text tower for SD1.5,
OpenCLIP ViT-H/14's (its penultimate layer: 23 of 24 layers, gelu) for SD2. The tokenizer is CLIP's BPE, built
offline from resources/clip_bpe (`testbed.model.build_tokenizer`); SD2's pads with "!" as its published tokenizer does.
Weights are the classes' own initialisation under `torch.manual_seed(seed)`, saved as safetensors: nothing is
memorized, but every job of the workflow runs with the real shapes, dtypes and memory.

`architecture_hash` names an architecture: sha256 of the networks' init arguments (class defaults filled in,
bookkeeping keys such as `_diffusers_version` or `_name_or_path` never read), so a pipeline written here and
read back hashes like the published config it was built from (`published_hash`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from pathlib import Path

from memprune.errors import InputError

log = logging.getLogger(__name__)

_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
          "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "trained_betas": None}

ARCHITECTURES = {
    "sd15": {
        "unet": {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
                 "center_input_sample": False, "cross_attention_dim": 768, "down_block_types": _DOWN,
                 "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
                 "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
                 "out_channels": 4, "sample_size": 64, "up_block_types": _UP},
        "vae": {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
                "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
                "up_block_types": ["UpDecoderBlock2D"] * 4},
        "text_encoder": {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 768,
                         "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
                         "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12,
                         "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408,
                         "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        "tokenizer": {"model_max_length": 77, "pad_token": "<|endoftext|>"},
        "scheduler": ("PNDMScheduler", {**_BETAS, "skip_prk_steps": True}),
    },
    "sd2": {
        "unet": {"act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
                 "center_input_sample": False, "cross_attention_dim": 1024, "down_block_types": _DOWN,
                 "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
                 "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
                 "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
                 "sample_size": 96, "up_block_types": _UP, "use_linear_projection": True},
        "vae": {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
                "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 768,
                "up_block_types": ["UpDecoderBlock2D"] * 4},
        "text_encoder": {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1024,
                         "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 4096,
                         "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 16,
                         "num_hidden_layers": 23, "projection_dim": 512, "vocab_size": 49408,
                         "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        "tokenizer": {"model_max_length": 77, "pad_token": "!"},
        "scheduler": ("DDIMScheduler", {**_BETAS, "prediction_type": "v_prediction"}),
    },
}


def _classes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    return {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextConfig}


def _init_params(cls) -> list:
    return [p for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _init_values(cls, given: dict) -> dict:
    """The init arguments of `cls` (a diffusers model or a transformers config): `given`'s values, the
    signature's defaults for the rest; tuples as lists (as config.json stores them). Bookkeeping is left out:
    names starting with "_", and a transformers config's generic fields (its version, dtype, label maps)."""
    from transformers import PretrainedConfig

    generic = {p.name for p in _init_params(PretrainedConfig)} if issubclass(cls, PretrainedConfig) else set()
    params = [p for p in _init_params(cls) if p.name not in generic and not p.name.startswith("_")]
    values = {p.name: given.get(p.name, p.default) for p in params}
    return json.loads(json.dumps(values, default=list))


def architecture_hash(configs: dict) -> str:
    """sha256 (hex) of the networks' architecture: `configs` = {unet, vae, text_encoder: config dict}, each reduced
    to its class's init arguments (defaults filled in), serialised with sorted keys."""
    classes = _classes()
    canonical = {k: _init_values(classes[k], dict(configs[k])) for k in ("unet", "vae", "text_encoder")}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def published_hash(arch: str) -> str:
    return architecture_hash(_arch(arch))


def pipeline_hash(pipe) -> str:
    """The architecture hash of a loaded pipeline (its networks' configs)."""
    return architecture_hash({"unet": dict(pipe.unet.config), "vae": dict(pipe.vae.config),
                              "text_encoder": pipe.text_encoder.config.to_dict()})


def _arch(arch: str) -> dict:
    if arch not in ARCHITECTURES:
        raise InputError(f"make-random-model: unknown --arch {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_pipeline(arch: str, seed: int = 0, bpe_path: Path | None = None, overrides: dict | None = None):
    """A StableDiffusionPipeline of `arch` with seeded random weights (float32). `overrides`: {component: {key:
    value}} over the published configs (tests build smaller variants this way; the result then hashes apart)."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from memprune.testbed.model import build_tokenizer

    spec = _arch(arch)
    cfg = {k: {**spec[k], **(overrides or {}).get(k, {})} for k in ("unet", "vae", "text_encoder", "tokenizer")}
    bpe_path = (Path(bpe_path) if bpe_path
                else Path(__file__).resolve().parents[2] / "resources/clip_bpe/bpe_simple_vocab_16e6.txt.gz")
    if not bpe_path.is_file():
        raise InputError(f"{bpe_path}: CLIP's BPE file is missing (resources/clip_bpe ships it)")
    tokenizer = build_tokenizer(bpe_path, cfg["tokenizer"]["model_max_length"])
    tokenizer.pad_token = cfg["tokenizer"]["pad_token"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    name, sched_cfg = spec["scheduler"]
    scheduler = getattr(diffusers, name).from_config(sched_cfg)
    return StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def write_random_model(arch: str, out: Path, seed: int = 0, dtype: str = "float16", bpe_path: Path | None = None,
                       overrides: dict | None = None) -> Path:
    """Build `arch` with random weights and save it (safetensors, `dtype`) to `out`, atomically; a record
    `memprune_random_model.json` beside it names the architecture, its hash, the seed and the dtype."""
    from memprune.formats.store import atomic_dir
    from memprune.models import resolve_dtype

    pipe = build_pipeline(arch, seed, bpe_path, overrides)
    pipe.to(resolve_dtype(dtype, "cpu"))
    record = {"arch": arch, "seed": seed, "dtype": dtype, "architecture_hash": pipeline_hash(pipe),
              "published_hash": published_hash(arch), "overrides": overrides or {}}
    with atomic_dir(Path(out)) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / "memprune_random_model.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    log.info("random %s pipeline (seed %d, %s, hash %s) -> %s", arch, seed, dtype, record["architecture_hash"][:12],
             out)
    return Path(out)


def write_stand_in_images(prompts_file: Path, root: Path, size: int = 512, seed: int = 0) -> Path:
    """Seeded random images in the fetched-images layout (`<root>/<index>/0.png`, index = 0-based line of
    `prompts_file`): stand-ins for a random model's "training images", so that every stage reading training
    images (evaluation, recovery, adversarial fine-tuning) runs offline with the real image size. Each image is
    smooth noise (8x8 colours upsampled), one generator per index."""
    import numpy as np
    from PIL import Image

    from memprune.formats.prompts import read_prompts
    from memprune.formats.store import atomic_dir

    prompts = read_prompts(Path(prompts_file))
    with atomic_dir(Path(root)) as tmp:
        for i in range(len(prompts)):
            coarse = np.random.default_rng([seed, i]).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            (Path(tmp) / str(i)).mkdir()
            Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(Path(tmp) / str(i) / "0.png")
    return Path(root)


def add_random_model_arguments(sub) -> None:
    """Register `make-random-model` and `make-stand-in-images`."""
    p = sub.add_parser("make-stand-in-images",
                       help="seeded random images as a prompt file's fetched training images (<root>/<index>/0.png)")
    p.add_argument("--prompts-file", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda args: write_stand_in_images(Path(args.prompts_file), Path(args.root), args.size,
                                                           args.seed))
    p = sub.add_parser("make-random-model",
                       help="write a diffusers pipeline with SD1.5's or SD2's published architecture and random "
                            "weights")
    p.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    p.add_argument("--out", required=True, help="the pipeline directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float16",
                   help="weights' dtype on disk (float16: SD1.5 is 2.1 GB, float32 twice that)")
    p.add_argument("--bpe", default=None, help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: resources/clip_bpe)")
    p.set_defaults(func=lambda args: write_random_model(args.arch, Path(args.out), args.seed, args.dtype,
                                                        Path(args.bpe) if args.bpe else None))
