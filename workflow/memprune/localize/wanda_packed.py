"""Bit-packed fast path of the paper's equations 6 and 7 (`wanda_scores` holds them as written): the same masks, ranked
only over a few candidate columns per row and written straight into numpy.packbits layout (masks are ~1% dense).
Tests check it against `wanda_scores.memorized_mask` at every step, ties included."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from memprune.localize.wanda_scores import k_per_row, top_k_per_row

if TYPE_CHECKING:
    import torch


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
    import torch
    abs_w = weight.abs()
    out, n = abs_w.shape
    k = k_per_row(sparsity, n)
    steps = memorized_sumsq.shape[0]
    shape = (steps, out, (n + 7) // 8)
    if buffer is None:
        packed = np.zeros(shape, dtype=np.uint8)
    elif buffer.shape != shape or buffer.dtype != np.uint8 or not buffer.flags.c_contiguous:
        raise ValueError(f"buffer: expected a C-contiguous uint8 {shape}, got {buffer.dtype} {buffer.shape}")
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
    P = min(n, max(N_CAND_PER_K * k, 256))  # candidates per row
    # each row's P columns of largest upper bound, in no order (argpartition: ~4x faster than torch.topk here,
    # measured); any choice among ties at the P-th bound gives the same masks, since the check below is strict
    upper = (abs_w * a_all.amax(dim=0)).numpy()
    if P < n:
        cand_np = np.argpartition(upper, n - P, axis=1)[:, n - P :]
        # every column outside a row's candidates scores at most this, at any step
        outside_np = np.take_along_axis(upper, cand_np[:, :1], axis=1)[:, 0]
    else:
        cand_np, outside_np = np.broadcast_to(np.arange(n), (out, n)), np.full(out, -np.inf, dtype=upper.dtype)
    w_cand_np = np.take_along_axis(abs_w.numpy(), cand_np, axis=1)
    n_bytes = shape[2]
    flat = packed.reshape(steps, -1)
    for t in range(steps):
        a, b = a_all[t], b_all[t]
        # S_mem > S_null  <=>  |W_ij| (a_j - b_j) > 0: a column condition on the nonzero weights
        beats_null = (a > b).numpy()
        scores = w_cand_np * np.take(a.numpy(), cand_np)
        # each row's k-th and (k+1)-th largest candidate score, as values (a row's selection is a set: when the
        # k-th is above the (k+1)-th, it is exactly the candidates scoring >= the k-th). One pivot and a max
        # over the part below it: numpy's partition at two pivots is ~4x slower, argpartition ~2x (measured)
        part = np.partition(scores, P - k, axis=1)
        kth, nxt = part[:, P - k], part[:, : P - k].max(axis=1)
        exact = (outside_np < kth) & (nxt < kth)
        r, c = np.nonzero(scores >= np.where(exact, kth, np.inf)[:, None])
        sel_cols = cand_np[r, c]
        keep = beats_null[sel_cols] & (w_cand_np[r, c] > 0)
        sel_rows, sel_cols = r[keep], sel_cols[keep]
        redo = np.nonzero(~exact)[0]
        if redo.size:  # rank those rows in full, with top_k_per_row's tie rule
            w_redo = abs_w[torch.from_numpy(redo)]
            chosen = top_k_per_row(w_redo * a, k) & torch.from_numpy(beats_null).unsqueeze(0) & (w_redo > 0)
            rr, cc = chosen.nonzero(as_tuple=True)
            sel_rows, sel_cols = np.concatenate([sel_rows, redo[rr.numpy()]]), np.concatenate([sel_cols, cc.numpy()])
        # each (row, column) is selected once, so adding the bits of a byte is or-ing them (np.add.at has a
        # fast path that np.bitwise_or.at lacks)
        np.add.at(flat[t], sel_rows * n_bytes + (sel_cols >> 3), np.uint8(128) >> (sel_cols & 7).astype(np.uint8))
    return packed


def union_over_timesteps_packed(packed: np.ndarray, tau: int) -> np.ndarray:
    """Equation 7 on bit-packed masks: (step, out, in/8) uint8 -> (out, in/8)."""
    return np.bitwise_or.reduce(packed[:tau], axis=0)


def memorized_masks_over_time(weight: torch.Tensor, memorized_sumsq: torch.Tensor, null_sumsq: torch.Tensor,
                              n_prompts: int, sparsity: float) -> torch.Tensor:
    """Equation 6 at every timestep, unpacked: (step, in) sums -> bool (step, out, in)."""
    import torch
    packed = memorized_masks_packed(weight, memorized_sumsq, null_sumsq, n_prompts, sparsity)
    return torch.from_numpy(unpack(packed, weight.shape[1]))
