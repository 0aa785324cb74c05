"""`eval-sample`: every test prompt x seed generated with one model variant, timed; PNGs, index.csv, timing.json.

The variant (`memprune.variants.get(name)`) loads the model (`load(model, checkpoint, device, dtype, scheduler)`)
and generates (`generate(pipe, prompts, seeds, cfg, params, progress) -> (images, info)`), an inference-time
mitigation included. Its per-image info arrays (N,) are concatenated over the timed chunks and recorded in
timing.json as `<variant>_mean_<key>` (numbers, NaN skipped) or `<variant>_<key>_fraction` (booleans); its
scalars as they are, those named `*_seconds` summed over the chunks.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from memprune.errors import InputError
from memprune.evaluate.prompts import eval_prompts

log = logging.getLogger(__name__)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _combine_info(name: str, infos: list[dict], sizes: list[int]) -> dict:
    """The chunks' info dicts -> timing.json entries (see the module docstring)."""
    out: dict = {}
    per_image: dict[str, list[np.ndarray]] = {}
    for info, n in zip(infos, sizes):
        for k, v in info.items():
            if np.ndim(v) == 1 and len(v) == n:
                per_image.setdefault(k, []).append(np.asarray(v))
            elif k.endswith("_seconds"):
                out[k] = out.get(k, 0.0) + float(v)
            else:
                out[k] = v.item() if isinstance(v, np.generic) else v
    for k, parts in per_image.items():
        values = np.concatenate(parts)
        if values.dtype == bool:
            out[f"{name}_{k}_fraction"] = float(np.mean(values))
        else:
            out[f"{name}_mean_{k}"] = float(np.nanmean(values))
    return out


def sample_variant(variant: str, model: str | Path, out: str | Path, memorized: str | Path, seeds: list[int], cfg,
                   checkpoint: str | Path | None = None, params: dict | None = None,
                   max_memorized: int | None = None, nonmemorized: str | Path | None = None,
                   max_nonmemorized: int | None = None, device: str = "auto", dtype: str = "auto",
                   scheduler: str | None = None) -> dict:
    """Generate every (prompt, seed) of the test set with the registry's variant `variant` (`cfg`: a
    `SamplingConfig`; `params` over the variant's `default_params`); write `out` and return the timing."""
    import torch
    from tqdm.auto import tqdm

    from memprune import variants
    from memprune.sampling import png_bytes
    from memprune.formats.store import atomic_dir

    var = variants.get(variant)
    if var.needs_checkpoint and not checkpoint:
        raise InputError(f"eval-sample --variant {variant} needs --checkpoint (an edit checkpoint directory)")
    params = {**var.default_params, **(params or {})}
    mem, non = eval_prompts(memorized, max_memorized, nonmemorized, max_nonmemorized)
    prompts = mem + non
    groups = ["memorized"] * len(mem) + ["nonmemorized"] * len(non)
    flat_p = [p for p in prompts for _ in seeds]
    flat_s = [s for _ in prompts for s in seeds]
    pipe = var.load(model, checkpoint, device, dtype, scheduler)
    device = str(pipe.unet.device)
    var.generate(pipe, flat_p[:1], flat_s[:1], cfg, params, False)  # warm-up (lazy initialisation), not timed
    # Chunks of images bound the memory (SD: thousands of 512 px images); only generation is timed, not PNG
    # encoding. Chunks are whole batches, so batching is the same as in one call.
    chunk = cfg.batch_size * max(1, 256 // cfg.batch_size)
    seconds = cpu_seconds = 0.0
    infos, sizes = [], []
    with atomic_dir(Path(out)) as tmp:
        rows = []
        for start in tqdm(range(0, len(flat_p), chunk), desc=f"eval-sample {variant}"):
            ps, ss = flat_p[start : start + chunk], flat_s[start : start + chunk]
            _sync(device)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            images, info = var.generate(pipe, ps, ss, cfg, params, False)
            _sync(device)
            seconds += time.perf_counter() - wall0
            cpu_seconds += time.process_time() - cpu0
            infos.append(info)
            sizes.append(len(ps))
            for i, (p, s, img) in enumerate(zip(ps, ss, images), start):
                name = f"{i:05d}_s{s}.png"
                (tmp / name).write_bytes(png_bytes(img))
                rows.append({"file": name, "prompt": p, "seed": s, "group": groups[i // len(seeds)]})
        n = max(len(flat_p), 1)
        timing = {"variant": variant, "checkpoint": str(checkpoint or ""), "model": str(model),
                  "seconds": seconds, "cpu_seconds": cpu_seconds, "n_images": len(flat_p),
                  "seconds_per_image": seconds / n, "cpu_seconds_per_image": cpu_seconds / n,
                  "device": device, "torch_threads": torch.get_num_threads(), "steps": cfg.steps,
                  "guidance": cfg.guidance, "batch_size": cfg.batch_size,
                  "timed": "generation of every test image (model loading, a one-image warm-up and PNG writing "
                           "excluded; a variant's inference-time mitigation, e.g. Wen's embedding optimisation, "
                           "included)",
                  "variant_params": params, **_combine_info(variant, infos, sizes)}
        log.info("%s: %d images in %.1f s (%.3f s/image)", variant, len(flat_p), seconds, timing["seconds_per_image"])
        with open(tmp / "index.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "prompt", "seed", "group"])
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    return timing
