"""Masks (equations 4-7), density and pairwise IOU for Stable-Diffusion-1.5-shaped data, timed.

Synthetic numbers with SD1.5's shapes: 16 ff.net.2 layers (out x in = 320x1280 ... 1280x5120), 51 UNet calls
(PNDM, 50 steps), 10 subsets x 10 prompts. Activation norms are log-normal per feature (GEGLU outputs are
heavy-tailed), weights Gaussian. Prints the wall-clock time of each stage and the total, then the time to
write and read one subset's mask store (not in the total).

    python benchmarks/masks_sd15.py [--subsets 10] [--steps 51]
"""

import argparse
import mmap
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from memprune.analysis.density_iou import layer_overlap
from memprune.formats.masks import MaskSet, read_mask_set, write_mask_set
from memprune.analysis.overlap import mean_over_pairs
from memprune.localize.wanda_scores import memorized_mask
from memprune.localize.wanda_packed import memorized_masks_packed, union_over_timesteps_packed

SD15 = ([(320, 1280)] * 2 + [(640, 2560)] * 2 + [(1280, 5120)] * 2 + [(1280, 5120)] + [(1280, 5120)] * 3
        + [(640, 2560)] * 3 + [(320, 1280)] * 3)


_LAYER = {}  # layer index -> (weight, null sums, subsets' sums, shared mask buffers), inherited by forked workers


def _shared(shape) -> np.ndarray:
    """A uint8 array in anonymous shared memory: forked workers write masks into it, nothing is pickled back
    (as in the pipeline, where each mask job writes its own store)."""
    return np.frombuffer(mmap.mmap(-1, max(1, int(np.prod(shape)))), dtype=np.uint8).reshape(shape)


def _subset_masks(args):
    li, si, n_prompts, sparsity, tau = args
    torch.set_num_threads(1)
    w, null, mems, masks, unions = _LAYER[li]
    memorized_masks_packed(w, mems[si], null, n_prompts, sparsity, buffer=masks[si])
    unions[si] = union_over_timesteps_packed(masks[si], tau)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subsets", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--steps", type=int, default=51)
    ap.add_argument("--sparsity", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2,
                    help="subsets computed in parallel, as `snakemake --cores 2` runs mask jobs")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    torch.set_num_threads(args.threads)  # as the masks rule: one thread per job, Snakemake runs subsets in parallel
    print(f"torch threads per job: {torch.get_num_threads()}, parallel mask jobs: {args.jobs}; density/IOU/random "
          f"control in {args.jobs} threads (as the analysis job)")
    t_masks = t_overlap = 0.0
    total_weights = sum(o * i for o, i in SD15)
    # Layers go in groups of `--jobs`: the masks of a group in `--jobs` processes (as mask jobs), then its density,
    # IOU and random control by `density_iou.layer_overlap` in `--jobs` threads (as the analysis job). Grouping
    # only bounds memory; each stage's time is what the pipeline's stage would take.
    first_subset = {}
    for g0 in range(0, len(SD15), args.jobs):
        group = list(range(g0, min(g0 + args.jobs, len(SD15))))
        _LAYER.clear()
        mems = {}
        for li in group:
            out_f, in_f = SD15[li]
            w = torch.randn(out_f, in_f, generator=g) * 0.02
            feature_scale = torch.exp(torch.randn(in_f, generator=g))
            null = feature_scale * torch.exp(0.3 * torch.randn(args.steps, in_f, generator=g))
            mems[li] = [args.prompts * feature_scale * torch.exp(0.5 * torch.randn(args.steps, in_f, generator=g))
                        for _ in range(args.subsets)]
            _LAYER[li] = (w, null, mems[li], _shared((args.subsets, args.steps, out_f, in_f // 8)),
                          _shared((args.subsets, out_f, in_f // 8)))
        t0 = time.perf_counter()
        with mp.get_context("fork").Pool(args.jobs) as pool:
            pool.map(_subset_masks, [(li, si, args.prompts, args.sparsity, 10) for li in group
                                     for si in range(args.subsets)])
        t1 = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            overlaps = list(pool.map(
                lambda li: layer_overlap(list(_LAYER[li][3]), list(_LAYER[li][4]), SD15[li][1],
                                         np.random.default_rng([0, li])), group))
        t2 = time.perf_counter()
        t_masks += t1 - t0
        t_overlap += t2 - t1
        for li in group:  # subset 0's masks, to time the mask store below
            first_subset[li] = (np.array(_LAYER[li][3][0]), np.array(_LAYER[li][4][0]))
        for li, (dens, _, pair, _) in zip(group, overlaps):
            print(f"layer {li:2d} {SD15[li][0]}x{SD15[li][1]}: density {np.mean(dens):.4f}, "
                  f"IOU {mean_over_pairs(pair[0]).mean():.3f} (random {mean_over_pairs(pair[1]).mean():.4f})")
        print(f"layers {group}: masks {t1 - t0:6.2f}s, density/IOU/random {t2 - t1:6.2f}s", flush=True)
    # The readable per-step rule (a full top-k of every row at every step) on one 1280x5120 layer, same run:
    out_f, in_f = 1280, 5120
    w = torch.randn(out_f, in_f, generator=g) * 0.02
    feature_scale = torch.exp(torch.randn(in_f, generator=g))
    null = feature_scale * torch.exp(0.3 * torch.randn(args.steps, in_f, generator=g))
    mem = args.prompts * feature_scale * torch.exp(0.5 * torch.randn(args.steps, in_f, generator=g))
    t0 = time.perf_counter()
    fast = memorized_masks_packed(w, mem, null, args.prompts, args.sparsity)
    t1 = time.perf_counter()
    slow = np.stack([np.packbits(memorized_mask(w, mem[t], null[t], args.prompts, args.sparsity).numpy(), axis=-1)
                     for t in range(args.steps)])
    t2 = time.perf_counter()
    assert np.array_equal(fast, slow)
    print(f"one 1280x5120 layer, {args.steps} steps: packed candidates {t1 - t0:.2f}s, readable rule {t2 - t1:.2f}s "
          f"(ratio {(t2 - t1) / (t1 - t0):.1f}x, identical masks)")
    print(f"SD1.5 shapes: {len(SD15)} layers, {total_weights / 1e6:.1f}M weights, {args.steps} steps, "
          f"{args.subsets} subsets x {args.prompts} prompts")
    print(f"masks: {t_masks:.1f}s  density+IOU(+random control): {t_overlap:.1f}s  total: {t_masks + t_overlap:.1f}s")
    # Not in the total: the pipeline also stores each subset's masks (zarr, written by its mask job) and the
    # analysis job reads them back. Timed here on subset 0's real masks, the way the rules do it.
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"l{li}" for li in first_subset]
        ms = MaskSet(layers=names, kinds={n: "weight" for n in names}, grid={f"l{li}": SD15[li] for li in first_subset},
                     union={f"l{li}": u for li, (_, u) in first_subset.items()},
                     per_step={f"l{li}": m for li, (m, _) in first_subset.items()},
                     steps=np.arange(args.steps), t=np.arange(args.steps), attrs={"method": "wanda"})
        t0 = time.perf_counter()
        write_mask_set(ms, Path(tmp) / "masks.zarr")
        t1 = time.perf_counter()
        read_mask_set(Path(tmp) / "masks.zarr")
        t2 = time.perf_counter()
    print(f"mask store of one subset ({sum(m.nbytes for m, _ in first_subset.values()) / 1e6:.0f} MB packed): "
          f"write {t1 - t0:.1f}s (in its mask job), read {t2 - t1:.1f}s (in the analysis job)")


if __name__ == "__main__":
    main()
