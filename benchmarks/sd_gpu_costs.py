"""Per-image costs of sampling and activation capture on Stable-Diffusion-shaped pipelines (random weights), eager
and compiled, with each path's share of the chip's peak from counted FLOPs.

The cost of a UNet call does not depend on the weights' values, so SD1.5's (and SD2's) UNet, VAE and CLIP text
encoder are built from their published configs with random weights (fp16 on CUDA). `tiny` is an SD1.5-structured
pipeline (4 latent channels, PNDM, CLIP text encoder) a few channels wide, at 64 px, so the same code runs on a
CPU; a diffusers pipeline directory (e.g. resources/testbed) is timed as it is. Paths, per batch size b:

* `unet`:     one UNet call on the CFG batch (2b samples), seconds per call;
* `generate`: `sampling.generate` of b prompts (the evaluation and the attacks), seconds per image;
* `capture`:  `capture.hooks.capture` of b prompts (hooks on every ff.net.2 layer), seconds per prompt;

each eager and, with `--compile`, with `models.compile_unet` (channels_last + torch.compile) on a copy of the
UNet. Measured so that order does not bias a path: every (path, batch, eager/compiled) runs once at its own batch
size before timing (the compile happens there, and is reported), then the repeats interleave all of them, and the
medians are reported. FLOPs are counted once per (path, batch) on the eager UNet with
`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention); share of peak = FLOPs / (seconds x
--peak-tflops). Prints one JSON line per measurement, the capture / generate ratios (of the medians, and the median of
each round's ratio), then a table.

    python -m benchmarks.sd_gpu_costs --models sd15 --batches 8,32 --compile      # an H200: peak 790 TFLOP/s bf16
    python -m benchmarks.sd_gpu_costs --models tiny --device cpu --batches 4 --steps 10 --compile --peak-tflops 0.1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from memprune.bench import ROOT, emit, int_list

BPE = ROOT / "resources/clip_bpe/bpe_simple_vocab_16e6.txt.gz"

VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           layers_per_block=2, sample_size=512, scaling_factor=0.18215)
TEXT = {"sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, hidden_act="quick_gelu"),
        "sd2": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                    max_position_embeddings=77, hidden_act="gelu"),
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=77, hidden_act="quick_gelu")}
TINY_UNET = dict(sample_size=8, block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=64,
                 attention_head_dim=8)
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64)
PATHS = ("unet", "generate", "capture")


def build(kind: str, device: str, dtype):
    """A StableDiffusionPipeline: `sd15`, `sd2` or `tiny` with random weights, or a pipeline directory."""
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from memprune.models import SD2_UNET_CONFIG, SD15_UNET_CONFIG, load_pipeline
    from memprune.testbed.model import build_tokenizer

    if kind not in TEXT:
        return load_pipeline(kind, device, "float16" if device.startswith("cuda") else "float32")
    torch.manual_seed(0)
    unet_cfg = {"sd15": SD15_UNET_CONFIG, "sd2": SD2_UNET_CONFIG, "tiny": dict(SD15_UNET_CONFIG, **TINY_UNET)}[kind]
    vae_cfg = dict(VAE, **TINY_VAE) if kind == "tiny" else dict(VAE, sample_size=512 if kind == "sd15" else 768)
    tok = build_tokenizer(BPE, 77)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg).to(dtype)
        vae = AutoencoderKL(**vae_cfg).to(dtype)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                            **TEXT[kind])).to(dtype)
    if kind == "sd2":  # SD2 ships DDIM with v-prediction, SD1.5 PNDM (51 UNet calls for 50 steps)
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    else:
        sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def runner(pipe, unet, path: str, batch: int, steps: int):
    """A zero-argument callable running `path` at `batch` with `unet` in the pipeline."""
    from memprune.capture.hooks import capture
    from memprune.sampling import SamplingConfig, generate

    cfg = SamplingConfig(steps=steps, guidance=7.5, batch_size=batch, compile="false")  # compiled: compiled before
    prompts = [f"a photograph number {i} of a mountain lake at dawn" for i in range(batch)]
    if path == "unet":
        c = unet.config
        side = c.sample_size
        with torch.inference_mode():  # inference tensors, as in the pipeline: the same compiled graph serves both
            x = torch.randn(2 * batch, c.in_channels, side, side, device=unet.device, dtype=unet.dtype)
            tokens = pipe.tokenizer.model_max_length
            text = torch.randn(2 * batch, tokens, c.cross_attention_dim, device=unet.device, dtype=unet.dtype)
            t = torch.tensor(500, device=unet.device)

        def call():
            with torch.inference_mode():
                unet(x, t, encoder_hidden_states=text)
        return call

    def run():
        pipe.unet = unet
        if path == "generate":
            generate(pipe, prompts, list(range(batch)), cfg)
        else:
            capture(pipe, prompts, 0, cfg)
    return run


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(kind: str, args) -> list[dict]:
    from torch._dynamo.utils import counters

    from memprune.capture.hooks import FFNInputRecorder
    from memprune.models import compile_unet, ffn_layers

    on_gpu = args.device.startswith("cuda")
    pipe = build(kind, args.device, torch.float16 if on_gpu else torch.float32)
    unets = {"eager": pipe.unet}
    if args.compile:
        unets["compiled"] = copy.deepcopy(pipe.unet)
    for mode, unet in unets.items():  # the recording hooks first, as `capture` does: one set of graphs for all paths
        FFNInputRecorder.for_unet(unet, ffn_layers(unet))
        compile_unet(unet, "true" if mode == "compiled" else "false")
    batches = int_list(args.batches)
    jobs = {(path, b, mode): runner(pipe, unet, path, b, args.steps)
            for b in batches for mode, unet in unets.items() for path in PATHS}  # capture right after generate
    flops = {(path, b): count_flops(runner(pipe, unets["eager"], path, b, args.steps))
             for b in batches for path in PATHS}
    warm = {key: timed(fn) for key, fn in jobs.items()}  # each at its own batch size; compiles happen here
    graphs = counters["stats"]["unique_graphs"]
    times = {key: [] for key in jobs}
    for _ in range(args.repeats):  # interleaved: every path once per round
        for key, fn in jobs.items():
            times[key].append(timed(fn))
    recompiled = counters["stats"]["unique_graphs"] - graphs  # should be 0: a timing that includes a compile is void
    rows = []
    for (path, b, mode), ts in times.items():
        per = statistics.median(ts) / (1 if path == "unet" else b)
        f = flops[(path, b)] / (1 if path == "unet" else b)
        rows.append({"model": kind, "batch": b, "path": path, "mode": mode,
                     "unit": "call" if path == "unet" else "image",
                     "median_s": round(per, 5), "repeats_s": [round(t, 4) for t in ts],
                     "warmup_s": round(warm[(path, b, mode)], 3), "tflop": round(f / 1e12, 5),
                     "share_of_peak": round(f / (per * args.peak_tflops * 1e12), 4),
                     "graphs_compiled_while_timing": recompiled})
    del pipe, unets
    if on_gpu:
        rows.append({"model": kind, "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="sd15,sd2", help="sd15, sd2, tiny or pipeline directories, comma-separated")
    ap.add_argument("--batches", default="8,32", help="prompts per batch, comma-separated")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time a compiled UNet (channels_last + torch.compile)")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="the chip's dense peak (H200 bf16/fp16: ~790)")
    ap.add_argument("--device", default="cuda", help="cpu for the tiny model or a testbed (fp32)")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds: skip models starting after this")
    args = ap.parse_args()
    on_gpu = args.device.startswith("cuda")
    t_start = time.time()
    emit(device=torch.cuda.get_device_name() if on_gpu else "cpu", torch=torch.__version__,
         threads=torch.get_num_threads(), peak_tflops=args.peak_tflops)
    rows = []
    for kind in args.models.split(","):
        if time.time() - t_start > args.deadline:
            emit(skipped=kind)
            continue
        rows += [emit(**row) for row in measure(kind, args)]
    timing = {(r["model"], r["batch"], r["path"], r["mode"]): r for r in rows if "path" in r}
    for (model, b, path, mode), r in timing.items():
        if path == "capture":
            gen = timing[(model, b, "generate", mode)]
            # per round too: the two ran back to back, so load that drifts between rounds cancels
            rounds = [c / g for c, g in zip(r["repeats_s"], gen["repeats_s"])]
            emit(model=model, batch=b, mode=mode, capture_over_generate=round(r["median_s"] / gen["median_s"], 3),
                 per_round_median=round(statistics.median(rounds), 3), per_round=[round(x, 3) for x in rounds])
    print("\n| model | batch | path | mode | s per call/image (median) | TFLOP | share of peak |")
    print("|---|---|---|---|---|---|---|")
    for r in timing.values():
        print(f"| {r['model']} | {r['batch']} | {r['path']} | {r['mode']} | {r['median_s']:.4f} | {r['tflop']:.4g} "
              f"| {100 * r['share_of_peak']:.1f}% |")


if __name__ == "__main__":
    main()
