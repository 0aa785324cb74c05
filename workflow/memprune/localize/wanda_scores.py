"""The paper's method (section 4.1, equations 2 and 4-7) as written: Wanda scores and memorized-neuron masks.

Pure tensor functions, no I/O; the bit-packed fast path that the workflow runs is
`wanda_packed.memorized_masks_packed` (same masks).
Notation: W is an `ff.net.2` weight (out, in), row i = output unit, column j = input feature (a GEGLU output
neuron). For a prompt set P at one (layer, timestep), X_P stacks the layer's inputs over prompts and tokens, so
its column norm ||X_P,j||_2 = sqrt(sum_{p in P} sum_tokens x_pj^2) is a sum of per-prompt sums of squares.

    eq. 2   S(W, X)  = |W| * ||X||_2                  the Wanda score (broadcast over rows)
    eq. 4   S_P      = S(W, X_P)                      the memorized prompts' score
    (unnumbered)  S_null = S(W, X_null), X_null = the null prompt "" stacked |P| times
                                                      => ||X_null,j|| = sqrt(|P|) * ||x_null,j||
    eq. 5   T_i      = the top-k entries of row i of S_P,  k = floor(sparsity * in)  (Wanda: int(in * ratio))
    eq. 6   M_t      = {(i, j) in T_i : S_P,ij > S_null,ij}
    eq. 7   M        = union of M_t over the first tau denoising steps; W[M] = 0 prunes
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: finding the localizers (the config check) imports no torch
    import torch


def wanda_score(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Equation 2: |W| * ||X_j||, (out, in) x (in,) -> (out, in)."""
    return weight.abs() * input_norm.unsqueeze(0)


def memorized_score(weight: torch.Tensor, memorized_sumsq: torch.Tensor) -> torch.Tensor:
    """Equation 4: S_P from the sum over P's prompts and tokens of x^2, (in,)."""
    return wanda_score(weight, memorized_sumsq.sqrt())


def null_score(weight: torch.Tensor, null_sumsq: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """The null prompt's score (unnumbered in the paper): one run of "" repeated |P| times."""
    return wanda_score(weight, (n_prompts * null_sumsq).sqrt())


def k_per_row(sparsity: float, in_features: int) -> int:
    return int(sparsity * in_features)


def top_k_per_row(score: torch.Tensor, k: int) -> torch.Tensor:
    """Equation 5: bool (out, in), the k largest entries of each row; among equal scores the lower column index
    wins, so the result is deterministic whatever the top-k kernel does with ties."""
    import torch
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


def memorized_mask(weight: torch.Tensor, memorized_sumsq: torch.Tensor, null_sumsq: torch.Tensor,
                   n_prompts: int, sparsity: float) -> torch.Tensor:
    """Equation 6 at one (layer, timestep): bool (out, in). Sums of squares are (in,)."""
    s_mem = memorized_score(weight, memorized_sumsq)
    s_null = null_score(weight, null_sumsq, n_prompts)
    return top_k_per_row(s_mem, k_per_row(sparsity, weight.shape[1])) & (s_mem > s_null)


def union_over_timesteps(masks: torch.Tensor, tau: int) -> torch.Tensor:
    """Equation 7: (step, out, in) -> (out, in), the union over the first `tau` denoising steps."""
    return masks[:tau].any(dim=0)
