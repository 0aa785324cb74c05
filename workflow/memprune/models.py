"""Load a diffusers text-to-image pipeline and find its FFN layers (`ff.net.2`, input = GEGLU output)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from memprune.errors import InputError

if TYPE_CHECKING:  # imported where used: importing this module stays light
    import torch

log = logging.getLogger(__name__)

# Stable Diffusion's UNet configs (diffusers' published config.json of each, the keys that matter): build the real
# architectures without weights, e.g. on the meta device (layer discovery tests) or with random weights (costs).
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
)
SD2_UNET_CONFIG = dict(SD15_UNET_CONFIG, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True)

_BLOCK_ORDER = {"conv_in": 0, "time_embedding": 0, "down_blocks": 1, "mid_block": 2, "up_blocks": 3}


def resolve_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str):
    """`auto` is float16 on CUDA (as the paper), float32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    except KeyError:
        raise InputError(f"config key model.dtype: unknown dtype {dtype!r}") from None


def resolve_compile(setting: str | bool, device_type: str) -> bool:
    """`model.compile`: `auto` is on for CUDA, off on CPU and MPS (where the default run stays eager and its outputs
    byte-identical); `true` / `false` force it."""
    value = str(setting).lower()
    if value == "auto":
        return device_type == "cuda"
    if value in ("true", "false"):
        return value == "true"
    raise InputError(f"config key model.compile: {setting!r} is not auto, true or false")


def compile_unet(unet, setting: str | bool = "auto", backend: str = "inductor") -> bool:
    """`torch.compile` the UNet in place (`nn.Module.compile`, inductor's default mode) in channels_last memory
    format, when `resolve_compile(setting, <its device>)` says so; once per UNet. Returns whether it is compiled.
    `backend`: dynamo's backend (tests use `aot_eager`, which skips inductor's code generation).

    Module names, state dicts and hooks present at the first call stay as they are. Dynamo by default skips the
    guards on module hooks, so a hook added after the first call would never run; they are turned on here, so such
    a hook (an inference-time mitigation, NeMo's blocking) recompiles instead of being ignored. Hooks meant to run
    on every call (`capture.hooks.FFNInputRecorder`) are installed once, before the first call."""
    import torch

    if getattr(unet, "_compiled_call_impl", None) is not None:
        return True
    if not resolve_compile(setting, unet.device.type):
        return False
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    unet.to(memory_format=torch.channels_last)
    unet.compile(backend=backend)
    log.info("UNet compiled (torch.compile, channels_last) on %s", unet.device)
    return True


# A derived testbed (`testbed.derived`): only its UNet is stored, over a base pipeline named in this file.
BASE_FILE = "memprune_base.json"


def is_derived(model_dir: str | Path) -> bool:
    return (Path(model_dir) / BASE_FILE).is_file()


def base_of(model_dir: str | Path) -> Path:
    """The base pipeline directory of a derived model; an InputError naming the file when unreadable or gone."""
    path = Path(model_dir) / BASE_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        base = (Path(model_dir) / info["base"]).resolve()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable derived-model record ({type(e).__name__}: {e})") from None
    if not (base / "model_index.json").is_file():
        raise InputError(f"{path}: its base {info['base']!r} ({base}) is not a diffusers pipeline directory")
    return base


def load_pipeline(model: str | Path, device: str = "auto", dtype: str = "auto", scheduler: str | None = None):
    """A `StableDiffusionPipeline` from a local directory or a hub id (offline-friendly: diffusers honours
    HF_HUB_OFFLINE). The safety checker is off: memprune must see what the model produces.

    `scheduler`: a diffusers scheduler class name (e.g. "DDIMScheduler") built from the model's own scheduler
    config, or None for the model's default."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    local = Path(model)
    derived = local.exists() and is_derived(local)  # a derived testbed: its own UNet on a base pipeline
    if local.exists() and not derived and not (local / "model_index.json").exists():
        raise InputError(f"{local}: not a diffusers pipeline directory (no model_index.json)")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(base_of(local) if derived else model), dtype=torch_dtype, safety_checker=None,
            requires_safety_checker=False, use_safetensors=True,  # never unpickle weights
        )
        if derived:
            from diffusers import UNet2DConditionModel

            pipe.unet = UNet2DConditionModel.from_pretrained(str(local), subfolder="unet", use_safetensors=True,
                                                             dtype=torch_dtype)
    except OSError as e:
        raise InputError(f"cannot load model {str(model)!r}: {e}") from None
    if scheduler:
        cls = getattr(diffusers, scheduler, None)
        if cls is None:
            raise InputError(f"config key model.scheduler: diffusers has no scheduler {scheduler!r}")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def ffn_layers(unet) -> list[tuple[str, "torch.nn.Linear"]]:
    """The second linear layer of every GEGLU feed-forward, ordered by execution (down, mid, up).

    Found by module type (a diffusers `FeedForward` whose `net[0]` is `GEGLU` and `net[2]` a Linear),
    never from a list of names. `named_modules()` yields `mid_block` after the up blocks, hence the sort.
    """
    import torch
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention import FeedForward

    found = []
    for name, module in unet.named_modules():
        if isinstance(module, FeedForward) and len(module.net) >= 3:
            if isinstance(module.net[0], GEGLU) and isinstance(module.net[2], torch.nn.Linear):
                found.append((f"{name}.net.2", module.net[2]))
    if not found:
        raise InputError(
            f"the UNet ({type(unet).__name__}) has no GEGLU feed-forward layers (ff.net.0 GEGLU, ff.net.2 Linear): "
            "memprune locates memorization in those layers"
        )
    # Python's sort is stable, so modules of one block keep their execution order.
    found.sort(key=lambda item: _BLOCK_ORDER.get(item[0].split(".")[0], 9))
    return found
