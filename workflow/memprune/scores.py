"""The paper's method (section 4, equations 2 and 4-7): Wanda scores and memorized-neuron masks.

Pure tensor functions, no I/O. Notation: W is an `ff.net.2` weight (out, in), row i = output unit,
column j = input feature (a GEGLU output neuron). For a prompt set P at one (layer, timestep),
X_P stacks the layer's inputs over prompts and tokens, so its column norm is
||X_P,j||_2 = sqrt(sum_{p in P} sum_tokens x_pj^2) -- a sum of per-prompt sums of squares.

    eq. 2/4  S_P    = |W| * ||X_P||_2          (broadcast over rows)
    eq. 5    S_null = |W| * ||X_null||_2,  X_null = the null prompt "" stacked |P| times
                                            => ||X_null,j|| = sqrt(|P|) * ||x_null,j||
    eq. 6    M_t    = {(i, j): S_P,ij among the top-k of row i  and  S_P,ij > S_null,ij},
             k = floor(sparsity * in)     (as Wanda: int(in * sparsity_ratio))
    eq. 7    M      = union of M_t over the first tau denoising steps
"""

from __future__ import annotations

import numpy as np
import torch


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||: (out, in) x (in,) -> (out, in)."""
    return weight.abs() * input_norm.unsqueeze(0)


def top_k_per_row(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (out, in): the k largest entries of each row; among equal scores the lower column index wins,
    so the result is deterministic whatever the top-k kernel does with ties."""
    out, n = score.shape
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(score, dtype=torch.bool)
    top = torch.topk(score, k + 1, dim=1, sorted=True).values
    kth = top[:, k - 1 : k]  # the k-th largest of each row
    mask = score >= kth
    # Only a tie between the k-th and (k+1)-th largest makes `>=` select more than k entries.
    tied_rows = (top[:, k] == top[:, k - 1]).nonzero().squeeze(1)
    if tied_rows.numel():
        s, t = score[tied_rows], kth[tied_rows]
        above, ties = s > t, s == t
        # fill the remaining places of each such row with its tied entries, left to right
        mask[tied_rows] = above | (ties & (ties.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)))
    return mask


def k_per_row(sparsity: float, in_features: int) -> int:
    return int(sparsity * in_features)


def memorized_mask(weight: torch.Tensor, memorized_sumsq: torch.Tensor, null_sumsq: torch.Tensor,
                   n_prompts: int, sparsity: float) -> torch.Tensor:
    """Equation 6 at one (layer, timestep): bool (out, in).

    memorized_sumsq: (in,) sum over the prompts of P (and tokens) of x^2; null_sumsq: (in,) the same for
    one run of the null prompt, which eq. 5 repeats |P| times.
    """
    s_mem = wanda_scores(weight, memorized_sumsq.sqrt())
    s_null = wanda_scores(weight, (n_prompts * null_sumsq).sqrt())
    return top_k_per_row(s_mem, k_per_row(sparsity, weight.shape[1])) & (s_mem > s_null)


def memorized_masks_over_time(weight: torch.Tensor, memorized_sumsq: torch.Tensor, null_sumsq: torch.Tensor,
                              n_prompts: int, sparsity: float) -> torch.Tensor:
    """Equation 6 at every timestep: (step, in) sums -> bool (step, out, in). See `memorized_masks_packed`."""
    packed = memorized_masks_packed(weight, memorized_sumsq, null_sumsq, n_prompts, sparsity)
    return torch.from_numpy(np.unpackbits(packed, axis=-1, count=weight.shape[1]).astype(bool))


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
        top_vals, top_pos = torch.topk(w_cand * a[cand], k + 1, dim=1, sorted=True)
        kth = top_vals[:, k - 1]
        exact = (outside < kth) & (top_vals[:, k] < kth)
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


def union_over_timesteps(masks: torch.Tensor, tau: int) -> torch.Tensor:
    """Equation 7: (step, out, in) -> (out, in), the union over the first `tau` denoising steps."""
    return masks[:tau].any(dim=0)


def union_over_timesteps_packed(packed: np.ndarray, tau: int) -> np.ndarray:
    """Equation 7 on bit-packed masks: (step, out, in/8) uint8 -> (out, in/8)."""
    return np.bitwise_or.reduce(packed[:tau], axis=0)
