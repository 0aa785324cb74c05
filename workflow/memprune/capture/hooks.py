"""Hooks on the FFN second linears (`ff.net.2`): per (layer, UNet call, image) the per-input-feature sum of
squares over tokens, i.e. the squared L2 norm ||X_j||^2 that Wanda's score needs, accumulated in float32.

The scores that use these numbers live in `memprune.localize.wanda_scores` (and its bit-packed fast path
`memprune.localize.wanda_packed`); this module only records them.

The recording runs on the model's device without a host sync and into storage `torch.compile` traces:
preallocated (call, batch, feature) float32 buffers written at a call index held in a device tensor. The hooks
are installed once per UNet and stay (armed for a sampling run, idle otherwise), because a compiled module never
sees hooks added after it compiled unless dynamo guards on them, and hooks appending to Python lists recompile on
every call. The timesteps come from the scheduler, not from the UNet's arguments.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from memprune.errors import InputError

if TYPE_CHECKING:  # imported where used: importing this module stays light
    import torch

log = logging.getLogger(__name__)

BRANCHES = ("uncond", "cond")  # diffusers concatenates [negative/unconditional, conditional] under CFG


def token_sumsq(x, normalize_tokens: bool = False):
    """(batch, ..., feature) -> (batch, feature) float32: the sum over tokens (the middle dimensions, spatial
    positions of the latent) of x^2, accumulated in float32 without a float32 copy of a low-precision `x`.

    `normalize_tokens=True` (the reference code's variant) L2-normalises each token's vector first; that variant
    works on a float32 copy of the activation."""
    import torch

    x = x.reshape(x.shape[0], -1, x.shape[-1])
    if normalize_tokens:
        x = x.float()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x.square().sum(dim=1)
    if x.dtype == torch.float32:
        # (measured: square().sum() is ~15x faster than the equivalent einsum on CPU)
        return x.square().sum(dim=1)
    # float16 / bfloat16: the norm kernel reads x in its own dtype and accumulates in float32
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).square()


class FFNInputRecorder:
    """Recording hooks on a UNet's `ff.net.2` layers (`layers`: [(name, Linear)] in execution order).

    `recording(calls, batch)` arms them for one sampling run: every UNet call then writes, for every layer, the
    (batch, feature) float32 `token_sumsq` of the layer's input (the GEGLU output) at the current call index; the
    last layer advances the index. `result()` returns {layer: (call, batch, feature) float32}. `for_unet` installs one
    recorder per UNet and reuses it (install it before `torch.compile`, or with dynamo's hook guards on: see
    `models.compile_unet`).
    """

    def __init__(self, unet, layers: list[tuple[str, "torch.nn.Module"]]):
        self.unet = unet
        self.layers = list(layers)
        self.armed = False
        self.normalize_tokens = False
        self.buffers: dict = {}
        self.calls_seen = None  # 0-d int64 device tensor: UNet calls since arming
        self._result: dict | None = None
        self._handles = [module.register_forward_pre_hook(self._layer_hook(name, last=i == len(self.layers) - 1))
                         for i, (name, module) in enumerate(self.layers)]

    @classmethod
    def for_unet(cls, unet, layers) -> "FFNInputRecorder":
        rec = getattr(unet, "_memprune_ffn_recorder", None)
        if rec is None or [n for n, _ in rec.layers] != [n for n, _ in layers]:
            if rec is not None:
                rec.remove()
            rec = cls(unet, layers)
            unet._memprune_ffn_recorder = rec
        return rec

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if getattr(self.unet, "_memprune_ffn_recorder", None) is self:
            del self.unet._memprune_ffn_recorder

    def _layer_hook(self, name: str, last: bool):
        def hook(module, args):
            if not self.armed:
                return
            buf = self.buffers[name]
            # one spare row at the end takes the writes of calls beyond `calls`; `recording` refuses such a run
            row = self.calls_seen.clamp(max=buf.shape[0] - 1).reshape(1)
            buf.index_copy_(0, row, token_sumsq(args[0].detach(), self.normalize_tokens).unsqueeze(0))
            if last:  # the layers run in this order, so the last one ends the UNet call's records
                # (a hook on the UNet itself would be a graph of its own after the compiled forward)
                self.calls_seen.add_(1)

        return hook

    @contextlib.contextmanager
    def recording(self, calls: int, batch: int, normalize_tokens: bool = False):
        """Arm the hooks for `calls` UNet calls of `batch` images each; the statistics are kept for `result()`."""
        import torch

        device = self.unet.device
        shapes = {name: (calls + 1, batch, module.in_features) for name, module in self.layers}
        if any(tuple(self.buffers.get(n, torch.empty(0)).shape) != s for n, s in shapes.items()) or \
                self.calls_seen is None or self.calls_seen.device != device:
            # reused while the shapes hold: the same tensors keep a compiled graph valid
            self.buffers = {n: torch.zeros(s, dtype=torch.float32, device=device) for n, s in shapes.items()}
            self.calls_seen = torch.zeros((), dtype=torch.int64, device=device)
        self.calls_seen.zero_()
        self.normalize_tokens = normalize_tokens
        self._result = None
        self.armed = True
        try:
            yield self
        finally:
            self.armed = False
        seen = int(self.calls_seen)  # one host sync, after the run
        if seen != calls:
            raise RuntimeError(f"{seen} UNet calls recorded where the scheduler made {calls}")
        self._result = {n: buf[:calls].to("cpu", copy=True).numpy() for n, buf in self.buffers.items()}

    def result(self) -> dict[str, np.ndarray]:
        """{layer: (call, batch, feature) float32} of the last completed `recording`."""
        if self._result is None:
            raise RuntimeError("no completed recording")
        return self._result


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
    from memprune.models import compile_unet, ffn_layers
    from memprune.sampling import generate

    if sampling.guidance <= 1.0:
        raise InputError(
            f"config key sampling.guidance = {sampling.guidance}: activation capture needs classifier-free "
            "guidance (> 1), whose unconditional branch is recorded beside the conditional one"
        )
    layers = ffn_layers(pipe.unet)
    rec = FFNInputRecorder.for_unet(pipe.unet, layers)  # before compiling: the compiled graph holds the hooks
    compile_unet(pipe.unet, sampling.compile)
    calls = scheduled_calls(pipe.scheduler, sampling.steps)
    per_batch = []
    steps_t = None
    bs = max(1, sampling.batch_size)
    for start in range(0, len(prompts), bs):
        batch = prompts[start : start + bs]
        n = len(batch)
        with rec.recording(calls, 2 * n, normalize_tokens):  # CFG: [uncond, cond] per UNet call
            generate(pipe, batch, [seed] * n, sampling,
                     prompt_embeds=None if prompt_embeds is None else prompt_embeds[start : start + bs])
        t = pipe.scheduler.timesteps.to("cpu", copy=True).numpy().astype(np.float64)
        if len(t) != calls:
            raise RuntimeError(f"the scheduler ran {len(t)} timesteps where {calls} were planned")
        if steps_t is not None and not np.array_equal(t, steps_t):
            raise RuntimeError("scheduler timesteps changed between batches")
        steps_t = t
        # (call, 2n, feature) -> (prompt, call, branch, feature)
        per_batch.append({name: arr.reshape(arr.shape[0], 2, n, arr.shape[2]).transpose(2, 0, 1, 3)
                          for name, arr in rec.result().items()})
    names = [name for name, _ in layers]
    merged = {name: np.concatenate([b[name] for b in per_batch]) for name in names}
    for name, arr in merged.items():
        if not np.isfinite(arr).all():
            raise InputError(f"non-finite activations (NaN or inf) in layer {name}: the model or its dtype is broken")
    return Capture(prompts=list(prompts), layers=names, sumsq=merged, timesteps=steps_t)


def scheduled_calls(scheduler, steps: int) -> int:
    """UNet calls a sampling run of `steps` makes (one per scheduler timestep; PNDM: 51 for 50 steps), from a
    copy of the scheduler, so the pipeline's own one is left as it is."""
    import copy

    fresh = copy.deepcopy(scheduler)
    fresh.set_timesteps(steps)
    return len(fresh.timesteps)


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
