"""NeMo's probe (localize/nemo.py holds the method): a model's first-step noise difference for a fixed set of
seeds, with value channels blocked, and its similarity (SSIM) to the unblocked one, batched.

`similarities` evaluates (blocked channels, seed) pairs, several candidate sets and seeds per UNet call, each
sample with its own blocked channels (a per-sample mask in the `to_v` hook). Results are memoised per pair; the
unblocked prediction is the reference itself (never recomputed). On the CPU (oneDNN, one thread) a sample's
prediction has the same bits in every call from `MIN_BATCH` samples up to a size that depends on the machine and
the model, and other bits in larger calls (the kernels are chosen by shape; measured on the planted testbed:
3 to 8 samples on an Intel Xeon with torch 2.14, 4 to 12 on an earlier machine). The probe finds that size at its
first prompt (`invariant_batch`: one call per size up to `BATCH`) and makes no larger call, each padded to
`MIN_BATCH`: the batched search takes the same decisions, to the bit, as one call per candidate.

Prefix reuse: the modules a UNet runs before a down or mid block (conv_in, the earlier down blocks) give the
same outputs for every candidate that blocks the same channels before that block. A call whose samples all
match the last recorded prefix of their seed skips those modules and reads their recorded outputs (the
neuron-by-neuron refinement of a later layer runs only from that layer's block on). The first skipping call of
a probe is checked against the full call; a difference switches the reuse off.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from memprune.errors import InputError
from memprune.prediction import to_epsilon

log = logging.getLogger(__name__)

BATCH, MIN_BATCH = 12, 4


def ssim(a, b):
    """SSIM of paired images (N, C, H, W) in [0, 1] -> (N,): Gaussian window of 11 px, sigma 1.5 (the code's),
    or the largest odd window below min(H, W) with sigma scaled; valid positions only, mean over channels."""
    import torch
    import torch.nn.functional as F

    size = min(11, min(a.shape[-2:]) - (1 - min(a.shape[-2:]) % 2))
    size = max(size, 1)
    sigma = 1.5 * size / 11
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).to(a.dtype)[None, None].repeat(a.shape[1], 1, 1, 1)

    def blur(t):
        return F.conv2d(t, win, groups=a.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def pairwise_max(deltas):
    """(S, C, H, W) -> (S,) numpy: per seed, the max SSIM of its delta to every other seed's."""
    import torch

    s = len(deltas)
    i, j = torch.triu_indices(s, s, 1)
    values = ssim(deltas[i], deltas[j]).cpu().numpy()
    best = np.full(s, -np.inf)
    np.maximum.at(best, i.numpy(), values)
    np.maximum.at(best, j.numpy(), values)
    return best


@contextlib.contextmanager
def blocking(layers: list, channels):
    """Zero the given global channel indices (of the concatenated `layers`' outputs) while the context lasts."""
    offsets = np.cumsum([0] + [lin.out_features for _, lin in layers])
    channels = np.asarray(sorted(channels), dtype=np.int64)
    hooks = {}
    for li in range(len(layers)):
        local = (channels[(channels >= offsets[li]) & (channels < offsets[li + 1])] - offsets[li]).tolist()
        if local:
            hooks[li] = local
    with _hooked(layers, hooks, _zero_columns):
        yield


def _zero_columns(out, idx):
    out = out.clone()
    out[..., idx] = 0
    return out


def _keep_where(out, keep):
    return out.where(keep[:, None, :], 0.0)  # (batch, tokens, channels); +0.0 as _zero_columns writes


@contextlib.contextmanager
def _hooked(layers, per_layer: dict, fn):
    handles = [layers[li][1].register_forward_hook(lambda m, i, out, a=arg: fn(out, a))
               for li, arg in per_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _split(tree, i):
    """A copy of sample `i` of every tensor in a (nested tuple of) batched tensor(s)."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(_split(t, i) for t in tree)
    return tree[i].clone()


def _stack(items):
    import torch

    if isinstance(items[0], (tuple, list)):
        return type(items[0])(_stack([it[k] for it in items]) for k in range(len(items[0])))
    return torch.stack(items)


class _Prefix:
    """The last recorded outputs of conv_in and of each down block, per seed, with the blocked channels (in the
    value layers they depend on) they were computed under."""

    def __init__(self, unet, names: list[str], offsets):
        blocks = [f"down_blocks.{i}." for i in range(len(unet.down_blocks))] + ["mid_block."]
        self.modules = [unet.conv_in] + list(unet.down_blocks)  # run in this order before the mid block
        block_of = [next(b for b, p in enumerate(blocks) if n.startswith(p)) for n in names]
        self.channel_block = np.repeat(block_of, np.diff(offsets))  # per global channel: its block
        self.first = min(block_of)  # skipping fewer modules than this saves nothing
        self.store: dict = {}  # (module index, seed) -> (key, output of that seed)
        self._keys: dict = {}  # blocked set -> its key per module
        self.checked = False
        self.on = True

    def key(self, j: int, blocked: frozenset) -> tuple:
        """What module j's output depends on besides the seed: the blocked channels of blocks before j."""
        keys = self._keys.get(blocked)
        if keys is None:
            ordered = sorted(blocked)
            blocks = self.channel_block[ordered] if ordered else np.zeros(0, int)
            keys = self._keys[blocked] = [tuple(c for c, b in zip(ordered, blocks) if b < m)
                                          for m in range(len(self.modules))]
        return keys[j]

    def clear(self) -> None:
        self.store.clear()
        self._keys.clear()

    def level(self, blocked: list, seeds: list) -> int:
        """How many leading modules every sample of a call can skip."""
        level = 0
        while level < len(self.modules):
            hit = [self.store.get((level, s)) for s in seeds]
            if not all(h is not None and h[0] == self.key(level, b) for h, b in zip(hit, blocked)):
                break
            level += 1
        return level if level > 1 + self.first else 0

    @contextlib.contextmanager
    def run(self, level: int, blocked: list, seeds: list):
        """Skip modules [0, level) (their recorded outputs), record the outputs of the others."""
        handles = []
        for j, module in enumerate(self.modules):
            if j < level:
                module.forward = lambda *a, _out=_stack([self.store[(j, s)][1] for s in seeds]), **k: _out
            else:
                handles.append(module.register_forward_hook(
                    lambda m, i, out, j=j: self._record(j, out, blocked, seeds)))
        try:
            yield
        finally:
            for module in self.modules[:level]:
                del module.forward
            for h in handles:
                h.remove()

    def _record(self, j, out, blocked, seeds):
        for i, (b, s) in enumerate(zip(blocked, seeds)):
            key = self.key(j, b)
            if self.store.get((j, s), (None,))[0] != key:
                self.store[(j, s)] = (key, _split(out, i))


class Probe:
    """The first-step noise difference of one model for a fixed set of seeds, with channels blocked on demand.
    `runs` counts UNet calls, `samples` the predictions they made (the search's cost). `size`: the latent's
    (h, w), the configured image size over the VAE's scale factor (`sampling.latent_size`); None: the UNet's
    sample size."""

    def __init__(self, unet, scheduler, layers: list, seeds: list[int], steps: int, step_index: int,
                 batch: int = BATCH, min_batch: int = MIN_BATCH, size: tuple[int, int] | None = None):
        import torch

        self.unet, self.layers, self.scheduler = unet, layers, scheduler
        self.names = [n for n, _ in layers]
        self.offsets = np.cumsum([0] + [lin.out_features for _, lin in layers])
        scheduler.set_timesteps(steps)
        if not 0 <= step_index < len(scheduler.timesteps):
            raise InputError(f"nemo: step_index {step_index} outside the {len(scheduler.timesteps)} timesteps")
        self.t = scheduler.timesteps[step_index]
        cfg = unet.config
        shape = (cfg.in_channels, *(size or (cfg.sample_size, cfg.sample_size)))
        dev, dt = unet.device, unet.dtype
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        self.x = (noise * scheduler.init_noise_sigma).to(dev, dt)
        self.x_in = scheduler.scale_model_input(self.x, self.t)
        self.dtype = dt
        self.batch, self.min_batch = max(int(batch), 1), max(min(int(min_batch), int(batch)), 1)
        self.batch_checked = False  # `invariant_batch` runs at the first prompt
        self.runs = self.samples = 0
        plain = hasattr(unet, "down_blocks") and hasattr(unet, "conv_in") and not hasattr(unet, "_orig_mod")
        self._prefix = _Prefix(unet, self.names, self.offsets) if plain else None
        self._memo: dict = {}  # (blocked, seed) -> similarity, for the prompt of `start`

    def blocking(self, channels):
        return blocking(self.layers, channels)

    def _eps(self, embed, index, hooks: dict):
        import torch

        with torch.no_grad(), _hooked(self.layers, hooks, _keep_where):
            out = self.unet(self.x_in[index], self.t,
                            encoder_hidden_states=embed.expand(len(index), -1, -1).to(self.dtype)).sample
        self.runs += 1
        self.samples += len(index)
        return self._epsilon(out, index)

    def _epsilon(self, out, index):
        """The UNet's output as a noise prediction (NeMo's score is defined on epsilon; SD2 predicts v)."""
        return to_epsilon(out, self.x_in[index], self.t, self.scheduler).to(out.dtype)

    def _normalised(self, eps, index):
        d = (eps - self.x[index]).float()
        lo, hi = d.amin(dim=(2, 3), keepdim=True), d.amax(dim=(2, 3), keepdim=True)
        return ((d - lo) / (hi - lo).clamp_min(1e-12)).cpu()

    def deltas(self, embed, blocked=()):
        """(S, C, H, W) float32 in [0, 1]: eps(x_T, t, y) - x_T, min-max normalised per (seed, channel); every
        seed in one call. eps is the UNet's output as a noise prediction, whatever the model predicts."""
        import torch

        with torch.no_grad(), self.blocking(blocked):
            out = self.unet(self.x_in, self.t,
                            encoder_hidden_states=embed.expand(len(self.x), -1, -1).to(self.dtype)).sample
        self.runs += 1
        self.samples += len(self.x)
        return self._normalised(self._epsilon(out, slice(None)), slice(None))

    def start(self, embed, reference) -> None:
        """Set the prompt (`embed` (1, tokens, dim)) and its unblocked deltas that `similarities` compares to."""
        self._embed, self._reference = embed, reference
        if not self.batch_checked:
            self.batch, self.batch_checked = self.invariant_batch(embed), True
        self._memo = {(frozenset(), s): float(v) for s, v in enumerate(ssim(reference, reference))}
        if self._prefix is not None:
            self._prefix.clear()

    def invariant_batch(self, embed) -> int:
        """The largest call size, up to `batch`, such that every size from `min_batch` on gives each sample the
        bits of a `min_batch` call (prompt `embed`, nothing blocked). Not counted in `runs` / `samples`."""
        import torch

        runs, samples = self.runs, self.samples
        index = [i % len(self.x) for i in range(self.batch)]
        ref = self._eps(embed, index[: self.min_batch], {})
        size = self.min_batch
        while size < self.batch and torch.equal(self._eps(embed, index[: size + 1], {})[: self.min_batch], ref):
            size += 1
        self.runs, self.samples = runs, samples
        if size < self.batch:
            log.info("nemo: calls of %d samples round like calls of %d, of %d differently: calls of at most %d",
                     size, self.min_batch, size + 1, size)
        return size

    def value(self, blocked: frozenset, seed: int):
        """The memoised similarity of a pair, or None."""
        return self._memo.get((blocked, seed))

    def similarities(self, pairs: list[tuple[frozenset, int]]) -> np.ndarray:
        """SSIM of each (blocked channels, seed index) pair's delta to the reference's (`start`), batched and
        memoised: (len(pairs),) float."""
        todo = list(dict.fromkeys(p for p in pairs if p not in self._memo))
        for start in range(0, len(todo), self.batch):
            chunk = todo[start : start + self.batch]
            padded = chunk + [chunk[-1]] * (self.min_batch - len(chunk))
            blocked, seeds = [b for b, _ in padded], [s for _, s in padded]
            d = self._normalised(self._blocked_eps(self._embed, blocked, seeds), seeds)
            for pair, v in zip(chunk, ssim(self._reference[seeds], d).numpy()):
                self._memo[pair] = float(v)
        return np.array([self._memo[p] for p in pairs], dtype=np.float64)

    def _blocked_eps(self, embed, blocked: list[frozenset], seeds: list[int]):
        import torch

        hooks = {}
        for li in range(len(self.layers)):
            lo, hi = self.offsets[li], self.offsets[li + 1]
            keep = torch.ones(len(seeds), hi - lo, dtype=torch.bool)
            for i, b in enumerate(blocked):
                local = [c - lo for c in b if lo <= c < hi]
                keep[i, local] = False
            if not keep.all():
                hooks[li] = keep.to(self.x.device)
        pre = self._prefix
        level = pre.level(blocked, seeds) if pre is not None and pre.on else 0
        if pre is None or not pre.on:
            return self._eps(embed, seeds, hooks)
        with pre.run(level, blocked, seeds):
            eps = self._eps(embed, seeds, hooks)
        if level and not pre.checked:  # once per probe: the skipping call equals the full one
            pre.checked = True
            full = self._eps(embed, seeds, hooks)
            if not torch.equal(full, eps):
                pre.on = False
                log.warning("nemo: reusing the UNet's prefix changed its output (max %.3g): reuse off",
                            float((full - eps).abs().max()))
                return full
        return eps
