"""Bit-packed fast path of the paper's equations 6 and 7 (`scores` holds them as written): the same masks, ranked
only over a few candidate columns per row and written straight into numpy.packbits layout (masks are ~1% dense).
Tests check it against `scores.memorized_mask` at every step, ties included."""

from __future__ import annotations

import numpy as np
import torch

from memprune.localize.wanda_scores import k_per_row, top_k_per_row


def unpack(packed: np.ndarray, n_columns: int) -> np.ndarray:
    """uint8 (..., ceil(n / 8)) packed along the last axis -> bool (..., n)."""
    return np.unpackbits(packed, axis=-1, count=n_columns).astype(bool)


N_CAND_PER_K = 8  # candidates ranked per row, in units of k: a bound check failed on ~0 rows per step at 8k


def memorized_masks_packed(weight: torch.Tensor, memorized_sumsq: torch.Tensor, null_sumsq: torch.Tensor,
                           n_prompts: int, sparsity: float, buffer: np.ndarray | None = None) -> np.ndarray:
    """Equation 6 at every timestep, bit-packed: (step, in) sums -> uint8 (step, out, ceil(in / 8)), the
    layout of `numpy.packbits(masks, axis=-1)`.

    Gives exactly `memorized_mask` at each step (tests check it, ties included), without ranking whole rows
    at every step: score_ij(t) = |W_ij| a_j(t) <= |W_ij| max_t a_j(t), so each row's P columns of largest
    |W_ij| max_t a_j hold its top-k at step t whenever the P-th of those upper bounds is below the row's
    k-th largest score among them. Rows where that check fails (or the k-th score is tied) are ranked in full.
    Masks are ~1% dense, so they are written straight into packed bits: into `buffer` when given (a uint8
    array of that shape, e.g. in shared memory; overwritten and returned).
    """
    abs_w = weight.abs()
    out, n = abs_w.shape
    k = k_per_row(sparsity, n)
    steps = memorized_sumsq.shape[0]
    shape = (steps, out, (n + 7) // 8)
    if buffer is None:
        packed = np.zeros(shape, dtype=np.uint8)
    elif buffer.shape != shape or buffer.dtype != np.uint8:
        raise ValueError(f"buffer: expected uint8 {shape}, got {buffer.dtype} {buffer.shape}")
    else:
        packed = buffer
        packed[...] = 0
    if k <= 0:
        return packed
    a_all = memorized_sumsq.sqrt()
    b_all = (n_prompts * null_sumsq).sqrt()
    if k >= n:  # every entry is in its row's top-k: only the null comparison remains
        for t in range(steps):
            packed[t] = np.packbits(((a_all[t] > b_all[t]).unsqueeze(0) & (abs_w > 0)).numpy(), axis=-1)
        return packed
    n_cand = min(n, max(N_CAND_PER_K * k, 256))
    upper, cand = torch.topk(abs_w * a_all.amax(dim=0), n_cand, dim=1, sorted=True)  # (out, P)
    w_cand = abs_w.gather(1, cand)
    # every column outside a row's candidates scores at most this, at any step
    outside = upper[:, -1] if n_cand < n else torch.full((out,), -torch.inf)
    rows_all = torch.arange(out)
    for t in range(steps):
        a, b = a_all[t], b_all[t]
        # S_mem > S_null  <=>  |W_ij| (a_j - b_j) > 0: a column condition on the nonzero weights
        beats_null = a > b
        # the k-th and (k+1)-th largest candidate scores in place, the k largest before them (in no order: a
        # row's selection is a set); numpy's partition is ~3x faster than a sorted torch.topk here (measured)
        scores = (w_cand * a[cand]).numpy()
        top_pos = torch.from_numpy(np.argpartition(-scores, (k - 1, k), axis=1)[:, : k + 1])
        top_vals = torch.from_numpy(np.take_along_axis(scores, top_pos[:, k - 1 :].numpy(), axis=1))
        kth = top_vals[:, 0]
        exact = (outside < kth) & (top_vals[:, 1] < kth)
        pos = top_pos[exact, :k]
        sel_cols = cand[exact].gather(1, pos).reshape(-1)
        keep = beats_null[sel_cols] & (w_cand[exact].gather(1, pos).reshape(-1) > 0)
        sel_rows = rows_all[exact].repeat_interleave(k)[keep]
        sel_cols = sel_cols[keep]
        redo = (~exact).nonzero().squeeze(1)
        if redo.numel():  # rank those rows in full, with top_k_per_row's tie rule
            w_redo = abs_w[redo]
            r, c = (top_k_per_row(w_redo * a, k) & beats_null.unsqueeze(0) & (w_redo > 0)).nonzero(as_tuple=True)
            sel_rows, sel_cols = torch.cat([sel_rows, redo[r]]), torch.cat([sel_cols, c])
        sel_rows, sel_cols = sel_rows.numpy(), sel_cols.numpy()
        bits = (np.uint8(128) >> (sel_cols & 7).astype(np.uint8)).astype(np.uint8)
        np.bitwise_or.at(packed[t], (sel_rows, sel_cols >> 3), bits)
    return packed


def union_over_timesteps_packed(packed: np.ndarray, tau: int) -> np.ndarray:
    """Equation 7 on bit-packed masks: (step, out, in/8) uint8 -> (out, in/8)."""
    return np.bitwise_or.reduce(packed[:tau], axis=0)


def memorized_masks_over_time(weight: torch.Tensor, memorized_sumsq: torch.Tensor, null_sumsq: torch.Tensor,
                              n_prompts: int, sparsity: float) -> torch.Tensor:
    """Equation 6 at every timestep, unpacked: (step, in) sums -> bool (step, out, in)."""
    packed = memorized_masks_packed(weight, memorized_sumsq, null_sumsq, n_prompts, sparsity)
    return torch.from_numpy(unpack(packed, weight.shape[1]))
