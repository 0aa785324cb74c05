"""Per-call GPU costs of memprune's stages on Stable-Diffusion-1.5/2-shaped pipelines (random weights).

Weights cannot be downloaded here, but the cost of a UNet call does not depend on the weights' values:
this builds SD1.5's (and SD2's) UNet, VAE and CLIP text encoder from their published configs with random
weights, in fp16 on the GPU, and times memprune's own code paths:

* `capture`: activation capture (hooks on the 16 ff.net.2 layers) of a batch of prompts, 50 steps, CFG;
* `generate`: plain sampling (the evaluation and the attack), per image;
* the hooks' overhead = capture / generate.

Prints one JSON line per measurement; the README's cluster cost table is computed from these.

    python benchmarks/sd_gpu_costs.py [--models sd15,sd2] [--batch 8] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           layers_per_block=2, sample_size=512, scaling_factor=0.18215)
TEXT = {"sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, hidden_act="quick_gelu"),
        "sd2": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                    max_position_embeddings=77, hidden_act="gelu")}


def build(kind: str, device: str, dtype):
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from memprune.models import SD2_UNET_CONFIG, SD15_UNET_CONFIG
    from memprune.testbed.model import build_tokenizer

    tok = build_tokenizer(ROOT / "resources/clip_bpe/bpe_simple_vocab_16e6.txt.gz", 77)
    with torch.device(device):
        unet = UNet2DConditionModel(**(SD15_UNET_CONFIG if kind == "sd15" else SD2_UNET_CONFIG)).to(dtype)
        vae = AutoencoderKL(**dict(VAE, sample_size=512 if kind == "sd15" else 768)).to(dtype)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                            **TEXT[kind])).to(dtype)
    if kind == "sd15":  # SD1.5 ships PNDM (51 UNet calls for 50 steps), SD2 DDIM with v-prediction
        sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1)
    else:
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(fn) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="sd15,sd2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cuda", help="cpu only for a plumbing check (fp32, slow)")
    ap.add_argument("--deadline", type=float, default=150, help="seconds: skip what would start after this")
    args = ap.parse_args()
    from memprune.capture.hooks import capture
    from memprune.sampling import SamplingConfig, generate

    t_start = time.time()
    on_gpu = args.device.startswith("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name() if on_gpu else "cpu", "torch": torch.__version__}), flush=True)
    for kind in args.models.split(","):
        if time.time() - t_start > args.deadline:
            print(json.dumps({"skipped": kind}), flush=True)
            continue
        pipe = build(kind, args.device, torch.float16 if on_gpu else torch.float32)
        cfg = SamplingConfig(steps=args.steps, guidance=7.5, batch_size=args.batch)
        prompts = [f"a photograph number {i} of a mountain lake at dawn" for i in range(args.batch)]
        generate(pipe, prompts[:1], [0], SamplingConfig(steps=3, guidance=7.5, batch_size=1))  # warm-up
        t_gen = timed(lambda: generate(pipe, prompts, list(range(args.batch)), cfg))
        t_cap = timed(lambda: capture(pipe, prompts, 0, cfg))
        print(json.dumps({
            "model": kind, "batch": args.batch, "steps": args.steps,
            "generate_s_per_image": round(t_gen / args.batch, 3),
            "capture_s_per_prompt": round(t_cap / args.batch, 3),
            "hook_overhead": round(t_cap / t_gen, 3),
            "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        }), flush=True)
        del pipe
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
