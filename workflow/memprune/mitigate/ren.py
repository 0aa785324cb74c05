"""Ren et al. (ECCV 2024), "Unveiling and mitigating memorization in text-to-image diffusion models through cross
attention": memorized prompts concentrate their cross-attention on a few tokens. Detection scores each image by
the entropy of its cross-attention at the first denoising step; the inference-time mitigation rescales the
cross-attention logits of the beginning token (BOS) of flagged images (the registry entry is `variants/ren.py`).

Detection (their `detect.py --mode E`, the first-step detector): the conditional branch's attention probabilities
at the first step, averaged over query positions (their `.mean(1)`), heads and the chosen cross-attention layers
(their `.mean((2, 3))` over layer 3 of SD's 16), give one distribution over the L tokens (padding included); its
entropy -sum p log p is the score, read as they read it (the ROC takes a higher score as memorized). An image is
flagged when its score >= `threshold`. Layers are indexed in execution order (down, mid, up).

Mitigation (their `text2img.py --c1 1.25 --cross_attn_mask --miti_mem`), in every cross-attention layer
(attn2, never self-attention) at every step, for a flagged image:
- conditional branch: the BOS logit q.k_0 / sqrt(d) of every head and query is multiplied by c1 (their
  `attn_weight[1::2, :, :, 0] *= c1`, taken after the mask bias is added) before the softmax;
- both branches, with `mask_padding` (their `--cross_attn_mask`): keys past the prompt's own tokens (BOS, words,
  EOS: the unpadded tokenization's length) are masked out, the unconditional branch with the same length.

Point by point, where this differs:
- their `--miti_mem` applies the mitigation to every prompt of a run (the detector is a separate ROC script);
  here it applies to the images the detector flags, as the paper describes (`detect: false`: all);
- their rescale indexes rows 1::2 of a [uncond, cond] batch of one prompt; here the conditional rows of any batch;
- their detector keeps one score per prompt and seed as generated; here the first step is run once more, on the
  conditional branch only, before sampling (the same x_T and text, so the same attention), costing one UNet call;
- with given text embeddings (the recovery attack's searched embedding) no prompt length is known and every
  position was optimised: the padding mask is not applied, only the BOS rescale;
- their mask code leaves the length undefined for prompts shorter than 2 tokens; here those are left unmasked.
Unflagged images go through diffusers' own processor untouched: bit-identical to plain generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from memprune.errors import InputError
from memprune.sampling import SamplingConfig, _initial_latents

if TYPE_CHECKING:  # imported where used: importing this module stays light
    import torch

C1 = 1.25  # their released processor's setting (local_cmd_inference_time_mitigation.sh)


def cross_attention_layers(unet) -> list[tuple[str, "torch.nn.Module"]]:
    """(name, Attention) of every transformer block's cross-attention (attn2), ordered by execution."""
    from diffusers.models.attention import BasicTransformerBlock

    from memprune.models import _BLOCK_ORDER

    found = [(f"{name}.attn2", m.attn2) for name, m in unet.named_modules()
             if isinstance(m, BasicTransformerBlock) and m.attn2 is not None]
    if not found:
        raise InputError(f"the UNet ({type(unet).__name__}) has no cross-attention (attn2): Ren et al. act on it")
    found.sort(key=lambda item: _BLOCK_ORDER.get(item[0].split(".")[0], 9))
    return found


def entropy(probs: np.ndarray) -> np.ndarray:
    """(..., L) distributions -> (...) entropy in nats."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def _project(attn, hidden_states, encoder_hidden_states):
    """Query, key, value (B, heads, tokens, head_dim) of an attn2 module, as diffusers' AttnProcessor2_0."""
    if (attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection
            or hidden_states.ndim != 3):
        raise InputError("Ren et al.'s processor supports the Stable Diffusion cross-attention layout only")
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    b = hidden_states.shape[0]
    q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def attention_logits(attn, hidden_states, encoder_hidden_states):
    """(logits (B, heads, queries, L) = q.k / sqrt(head_dim), value (B, heads, L, head_dim))."""
    q, k, v = _project(attn, hidden_states, encoder_hidden_states)
    return (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5), v


def rescaled_attention(attn, hidden_states, encoder_hidden_states, rescale, lengths, c1: float = C1):
    """attn2's output (B, queries, C) with the BOS logit of rows `rescale` (B,) bool multiplied by c1 and, where
    `lengths[b]` >= 2, keys from lengths[b] on masked out (their `my_simple_scaled_dot_product_attention`)."""
    import torch

    logits, v = attention_logits(attn, hidden_states, encoder_hidden_states)
    n_keys = logits.shape[-1]
    bias = torch.zeros(len(logits), 1, 1, n_keys, dtype=logits.dtype, device=logits.device)
    for b, n in enumerate(lengths):
        if n is not None and 2 <= n < n_keys:
            bias[b, ..., n:] = float("-inf")
    logits = logits + bias
    scale = torch.where(torch.as_tensor(rescale, device=logits.device), c1, 1.0).to(logits.dtype).view(-1, 1, 1)
    logits = torch.cat([logits[..., :1] * scale[..., None], logits[..., 1:]], dim=-1)
    out = torch.softmax(logits, dim=-1) @ v
    out = out.transpose(1, 2).reshape(len(out), -1, attn.heads * v.shape[-1]).to(hidden_states.dtype)
    return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


@dataclass
class RenState:
    """What the processors do for the current UNet batch: {row: (rescale BOS, prompt length or None)}."""

    rows: dict = field(default_factory=dict)
    c1: float = C1
    record: list | None = None  # detection: per call, the (B, L) attention averaged over heads and queries


class RenProcessor:
    """attn2 processor: diffusers' own processor for the whole batch, then the rows of `state.rows` recomputed
    with Ren et al.'s rescaled attention (the rest of the batch is left bit-identical); with `state.record`, the
    conditional attention probabilities are recorded instead (detection)."""

    def __init__(self, original, state: RenState):
        self.original, self.state = original, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        import torch

        if self.state.record is not None and encoder_hidden_states is not None:
            logits, _ = attention_logits(attn, hidden_states, encoder_hidden_states)
            self.state.record.append(torch.softmax(logits.float(), dim=-1).mean(dim=(1, 2)))
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is None or not self.state.rows:
            return out
        idx = sorted(self.state.rows)
        redo = rescaled_attention(attn, hidden_states[idx], encoder_hidden_states[idx],
                                  [self.state.rows[i][0] for i in idx], [self.state.rows[i][1] for i in idx],
                                  self.state.c1)
        out = out.clone()
        out[idx] = redo
        return out


class installed:
    """Context manager: RenProcessor on every attn2 of `unet`, sharing one `RenState`; the originals restored."""

    def __init__(self, unet, state: RenState):
        self.layers, self.state = cross_attention_layers(unet), state

    def __enter__(self):
        self.originals = [m.processor for _, m in self.layers]
        for (_, m), orig in zip(self.layers, self.originals):
            m.set_processor(RenProcessor(orig, self.state))
        return self.state

    def __exit__(self, *exc):
        for (_, m), orig in zip(self.layers, self.originals):
            m.set_processor(orig)


def first_step_entropy(pipe, embeds, seeds: list[int], cfg: SamplingConfig,
                       layers: list[int] | None = None) -> np.ndarray:
    """(N,) their first-step score of image i (text embeddings embeds[i] (L, D), noise of seeds[i]): the entropy
    of the conditional cross-attention at the first timestep, averaged over heads, queries and `layers` (indices
    into `cross_attention_layers`, execution order; None: all)."""
    import torch

    unet, sched = pipe.unet, pipe.scheduler
    n_layers = len(cross_attention_layers(unet))
    chosen = list(range(n_layers)) if layers is None else list(layers)
    if not chosen or any(not 0 <= i < n_layers for i in chosen):
        raise InputError(f"config key mitigation.ren.detect_layers: {layers} must index the UNet's {n_layers} "
                         f"cross-attention layers (0..{n_layers - 1}, execution order) or be null (all)")
    sched.set_timesteps(cfg.steps, device=unet.device)
    t0 = sched.timesteps[0]
    scores = []
    for start in range(0, len(seeds), cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[sl]]
        x = sched.scale_model_input(_initial_latents(pipe, gens, cfg) * sched.init_noise_sigma, t0)
        state = RenState(record=[])
        with installed(unet, state), torch.inference_mode():
            unet(x, t0, encoder_hidden_states=embeds[sl].to(unet.device, unet.dtype))
        probs = torch.stack([state.record[i] for i in chosen]).mean(0)  # (b, L)
        scores.append(entropy(probs.cpu().numpy()))
    return np.concatenate(scores) if scores else np.zeros(0)


def prompt_lengths(pipe, prompts: list[str]) -> list[int]:
    """Tokens of each prompt unpadded (BOS, words, EOS), truncated at the tokenizer's length (their prompt_length)."""
    tok = pipe.tokenizer
    return [len(ids) for ids in tok(prompts, truncation=True, max_length=tok.model_max_length).input_ids]


def ren_generate(pipe, seeds: list[int], cfg: SamplingConfig, prompts: list[str] | None = None, embeds=None,
                 c1: float = C1, threshold: float | None = 0.0, detect: bool = True, layers: list[int] | None = None,
                 mask_padding: bool = True) -> tuple[np.ndarray, dict]:
    """Images (N, H, W, 3) uint8 of `prompts` (or of text embeddings `embeds` (N, L, D)) with Ren et al.'s
    mitigation on the images their detector flags (`detect`: score >= `threshold`; False: every image).

    Returns (images, {"entropy": (N,) first-step score, "flagged": (N,) bool}).
    """
    import torch

    from memprune.sampling import generate, text_embeddings

    if (prompts is None) == (embeds is None):
        raise ValueError("Ren et al.: give prompts or embeddings")
    n = len(seeds)
    cond = text_embeddings(pipe, prompts) if embeds is None else embeds
    scores = first_step_entropy(pipe, cond, seeds, cfg, layers)
    flagged = scores >= threshold if detect else np.ones(n, dtype=bool)
    lengths = prompt_lengths(pipe, prompts) if (prompts is not None and mask_padding) else [None] * n
    out = []
    for start in range(0, n, cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        b = len(seeds[sl])
        state = RenState(c1=c1)
        for i in np.flatnonzero(flagged[sl]):  # the pipeline's batch is [uncond (b), cond (b)]
            length = lengths[start + i]
            state.rows[b + int(i)] = (True, length)
            if length is not None:
                state.rows[int(i)] = (False, length)
        kwargs = {"prompt_embeds": cond[sl]} if embeds is not None else {}
        ps = prompts[sl] if prompts is not None else [""] * b
        if not state.rows:  # nothing flagged: diffusers' pipeline as it is
            out.append(generate(pipe, ps, list(seeds[sl]), cfg, **kwargs))
            continue
        with installed(pipe.unet, state), torch.inference_mode():
            out.append(generate(pipe, ps, list(seeds[sl]), cfg, **kwargs))
    images = np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
    return images, {"entropy": scores, "flagged": flagged}
