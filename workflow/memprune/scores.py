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
    """Equation 6 at every timestep: (step, in) sums -> bool (step, out, in).

    Gives exactly `memorized_mask` at each step (tests check it), faster: a column j can hold a top-k entry
    of some row only if its best score a_j * max_i |W_ij| reaches a lower bound of every row's k-th largest
    score (taken over the columns of largest a_j), so the ranking runs on those columns only.
    """
    abs_w = weight.abs()
    col_max = abs_w.amax(dim=0)
    nonzero = abs_w > 0
    out, n = abs_w.shape
    k = k_per_row(sparsity, n)
    masks = torch.zeros((memorized_sumsq.shape[0], out, n), dtype=torch.bool)
    if k <= 0:
        return masks
    for t in range(memorized_sumsq.shape[0]):
        a = memorized_sumsq[t].sqrt()
        b = (n_prompts * null_sumsq[t]).sqrt()
        probe = torch.topk(a, min(n, max(4 * k, 64))).indices
        bound = top_k_bound(abs_w[:, probe] * a[probe], k).min()
        cols = (a * col_max >= bound).nonzero().squeeze(1)  # ascending, so ties still favour lower indices
        top = top_k_per_row(abs_w[:, cols] * a[cols], k)
        # S_mem > S_null  <=>  |W_ij| (a_j - b_j) > 0: a column condition on the nonzero weights
        masks[t][:, cols] = top & (a[cols] > b[cols]).unsqueeze(0) & nonzero[:, cols]
    return masks


def top_k_bound(score: torch.Tensor, k: int) -> torch.Tensor:
    """(out,) the k-th largest value of each row (of a column subset: a lower bound for the full row)."""
    return torch.topk(score, min(k, score.shape[1]), dim=1, sorted=False).values.amin(dim=1)


def union_over_timesteps(masks: torch.Tensor, tau: int) -> torch.Tensor:
    """Equation 7: (step, out, in) -> (out, in), the union over the first `tau` denoising steps."""
    return masks[:tau].any(dim=0)
