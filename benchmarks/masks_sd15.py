"""Masks (equations 4-7), density and pairwise IOU for Stable-Diffusion-1.5-shaped data, timed.

Synthetic numbers with SD1.5's shapes: 16 ff.net.2 layers (out x in = 320x1280 ... 1280x5120), 51 UNet calls
(PNDM, 50 steps), 10 subsets x 10 prompts. Activation norms are log-normal per feature (GEGLU outputs are
heavy-tailed), weights Gaussian. Prints the wall-clock time of each stage and the total.

    python benchmarks/masks_sd15.py [--subsets 10] [--steps 51]
"""

import argparse
import multiprocessing as mp
import time

import numpy as np
import torch

from memprune.analysis import random_like_packed
from memprune.overlap import density, mean_over_pairs, pairwise_iou
from memprune.scores import memorized_mask, memorized_masks_packed, union_over_timesteps_packed

SD15 = [(320, 1280)] * 2 + [(640, 2560)] * 2 + [(1280, 5120)] * 2 + [(1280, 5120)] + [(1280, 5120)] * 3 + [(640, 2560)] * 3 + [(320, 1280)] * 3


_LAYER = {}  # the current layer's weight and null sums, inherited by the forked workers


def _subset_masks(args):
    mem, n_prompts, sparsity, tau = args
    torch.set_num_threads(1)
    masks = memorized_masks_packed(_LAYER["w"], mem, _LAYER["null"], n_prompts, sparsity)
    return masks, union_over_timesteps_packed(masks, tau)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subsets", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--steps", type=int, default=51)
    ap.add_argument("--sparsity", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="subsets computed in parallel, as `snakemake --cores 2` runs mask jobs")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    torch.set_num_threads(args.threads)  # as the masks rule: one thread per job, Snakemake runs subsets in parallel
    print(f"torch threads per job: {torch.get_num_threads()}, parallel mask jobs: {args.jobs}; density/IOU in one process "
          "(as the analysis job)")
    t_masks = t_overlap = 0.0
    total_weights = sum(o * i for o, i in SD15)
    for li, (out_f, in_f) in enumerate(SD15):
        w = torch.randn(out_f, in_f, generator=g) * 0.02
        feature_scale = torch.exp(torch.randn(in_f, generator=g))
        null = feature_scale * torch.exp(0.3 * torch.randn(args.steps, in_f, generator=g))
        mems = [args.prompts * feature_scale * torch.exp(0.5 * torch.randn(args.steps, in_f, generator=g))
                for _ in range(args.subsets)]
        _LAYER.update(w=w, null=null)
        t0 = time.perf_counter()
        with mp.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(_subset_masks, [(m, args.prompts, args.sparsity, 10) for m in mems])
        packed = [r[0] for r in results]
        unions = [r[1] for r in results]
        t1 = time.perf_counter()
        dens = [density(p, out_f * in_f) for p in packed]
        mean_iou = mean_over_pairs(pairwise_iou(packed))
        rand = [random_like_packed(p, in_f, rng) for p in packed]
        rand_iou = mean_over_pairs(pairwise_iou(rand))
        mean_over_pairs(pairwise_iou(unions))
        t2 = time.perf_counter()
        t_masks += t1 - t0
        t_overlap += t2 - t1
        print(f"layer {li:2d} {out_f}x{in_f}: masks {t1 - t0:6.2f}s, density/IOU/random {t2 - t1:6.2f}s, "
              f"density {np.mean(dens):.4f}, IOU {mean_iou.mean():.3f} (random {rand_iou.mean():.4f})", flush=True)
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


if __name__ == "__main__":
    main()
