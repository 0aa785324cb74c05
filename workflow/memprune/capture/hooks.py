"""Hooks on the FFN second linears (`ff.net.2`): per (layer, UNet call, image) the per-input-feature sum of
squares over tokens, i.e. the squared L2 norm ||X_j||^2 that Wanda's score needs, accumulated in float32.

The statistics that use these numbers live in `scores`; this module only records them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from memprune.errors import InputError

log = logging.getLogger(__name__)

BRANCHES = ("uncond", "cond")  # diffusers concatenates [negative/unconditional, conditional] under CFG


class FFNInputRecorder:
    """Context manager: while active, every UNet call appends, for every `ff.net.2` layer, a (batch, feature)
    float32 tensor of sum over tokens of x^2 (x = the layer's input, the GEGLU output), and the call's
    timestep value.

    `normalize_tokens=True` reproduces the reference code's variant: each token's activation vector is
    L2-normalised before squaring.
    """

    def __init__(self, unet, layers: list[tuple[str, "torch.nn.Module"]], normalize_tokens: bool = False):
        self.unet = unet
        self.layers = layers
        self.normalize_tokens = normalize_tokens
        self.sumsq: dict[str, list] = {name: [] for name, _ in layers}
        self.timesteps: list[float] = []
        self._handles: list = []

    def _unet_hook(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t = t.flatten()[0].item() if hasattr(t, "flatten") else float(t)
        self.timesteps.append(float(t))

    def _layer_hook(self, name: str):
        def hook(module, args):
            x = args[0].float()
            if self.normalize_tokens:
                x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            # (batch, tokens, feature) -> (batch, feature); tokens are spatial positions of the latent.
            # (measured: square().sum() is ~15x faster than the equivalent einsum on CPU)
            x = x.reshape(x.shape[0], -1, x.shape[-1])
            self.sumsq[name].append(x.square().sum(dim=1).detach())

        return hook

    def __enter__(self):
        self._handles.append(self.unet.register_forward_pre_hook(self._unet_hook, with_kwargs=True))
        for name, module in self.layers:
            self._handles.append(module.register_forward_pre_hook(self._layer_hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """{layer: (call, batch, feature) float32}, timesteps (call,)."""
        out = {}
        for name, calls in self.sumsq.items():
            if len(calls) != len(self.timesteps):
                raise RuntimeError(f"layer {name}: {len(calls)} records for {len(self.timesteps)} UNet calls")
            out[name] = torch_stack_numpy(calls)
        return out, np.asarray(self.timesteps, dtype=np.float64)


def torch_stack_numpy(tensors) -> np.ndarray:
    import torch

    return torch.stack(tensors).cpu().numpy()


@dataclass
class Capture:
    """Activation statistics of a batch of prompts from one sampling run each."""

    prompts: list[str]
    layers: list[str]
    sumsq: dict[str, np.ndarray]  # layer -> (prompt, step, branch, feature) float32
    timesteps: np.ndarray  # (step,) the scheduler's t of each UNet call


def capture(pipe, prompts: list[str], seed: int, sampling, normalize_tokens: bool = False,
            prompt_embeds=None) -> Capture:
    """Sample every prompt once (same seed for all, as the paper) with hooks on; return their statistics.
    `prompt_embeds` (N, L, D), optional: text embeddings in place of the prompts' (e.g. the recovery attack's);
    `prompts` then only label them.

    Timesteps are whatever the scheduler makes (PNDM: 51 UNet calls for 50 steps); nothing assumes a count.
    """
    from memprune.models import ffn_layers
    from memprune.sampling import generate

    if sampling.guidance <= 1.0:
        raise InputError(
            f"config key sampling.guidance = {sampling.guidance}: activation capture needs classifier-free "
            "guidance (> 1), whose unconditional branch is recorded beside the conditional one"
        )
    layers = ffn_layers(pipe.unet)
    per_batch = []
    steps_t = None
    bs = max(1, sampling.batch_size)
    for start in range(0, len(prompts), bs):
        batch = prompts[start : start + bs]
        rec = FFNInputRecorder(pipe.unet, layers, normalize_tokens)
        with rec:
            generate(pipe, batch, [seed] * len(batch), sampling,
                     prompt_embeds=None if prompt_embeds is None else prompt_embeds[start : start + bs])
        sumsq, t = rec.result()
        if steps_t is not None and not np.array_equal(t, steps_t):
            raise RuntimeError("scheduler timesteps changed between batches")
        steps_t = t
        n = len(batch)
        per_layer = {}
        for name, arr in sumsq.items():  # (call, 2n, feature) -> (prompt, call, branch, feature)
            if arr.shape[1] != 2 * n:
                raise RuntimeError(f"layer {name}: batch {arr.shape[1]} is not 2 x {n} prompts (CFG off?)")
            per_layer[name] = arr.reshape(arr.shape[0], 2, n, arr.shape[2]).transpose(2, 0, 1, 3)
        per_batch.append(per_layer)
    names = [name for name, _ in layers]
    merged = {name: np.concatenate([b[name] for b in per_batch]) for name in names}
    for name, arr in merged.items():
        if not np.isfinite(arr).all():
            raise InputError(f"non-finite activations (NaN or inf) in layer {name}: the model or its dtype is broken")
    return Capture(prompts=list(prompts), layers=names, sumsq=merged, timesteps=steps_t)


def capture_to_dataset(cap: Capture, attrs: dict, variant: str = "paper"):
    """xarray Dataset: one variable per layer (prompt, step, branch, <layer>.feature); `t` along `step`.

    Only what the localizers read is stored: the conditional branch (`paper`: the equations use the memorized
    prompts' conditional activations) or both CFG branches pooled into one sum (`reference`: the released code
    pools them). Half of today's (prompt, step, 2 branches, feature) float32, with the same masks."""
    import xarray as xr

    if variant == "paper":
        branch, pick = "cond", lambda a: a[:, :, BRANCHES.index("cond")][:, :, None]
    elif variant == "reference":
        branch, pick = "pooled", lambda a: a.sum(axis=2, keepdims=True, dtype=np.float32)
    else:
        raise InputError(f"config key activations.variant: unknown variant {variant!r} (paper, reference)")
    data_vars = {
        name: (("prompt", "step", "branch", f"{name}.feature"), np.ascontiguousarray(pick(cap.sumsq[name])))
        for name in cap.layers
    }
    ds = xr.Dataset(
        data_vars,
        coords={
            "prompt": np.array(cap.prompts, dtype=object),
            "step": np.arange(len(cap.timesteps)),
            "t": ("step", cap.timesteps),
            "branch": np.array([branch], dtype=object),
        },
        attrs={**attrs, "layers": list(cap.layers), "statistic": "ffn_input_sumsq",
               "description": f"per-feature sum over tokens of squared ff.net.2 inputs (float32), CFG branch {branch}"},
    )
    return ds
