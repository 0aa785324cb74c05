"""Several recovery searches (`attacks/recovery.py`) in one UNet call per Adam step (`recovery.searches_per_call`).

Each (target, start) keeps its own embedding, noise and timesteps: the draws are made first, in the order the
one-at-a-time searches make them (a random start, then each step's noise and timesteps, target by target, start
by start), and the loss is the sum of the searches' own losses, so each embedding's gradient is its own search's
and Adam (elementwise, one step count) moves it as its own optimiser would. What changes is the floating-point
order inside a larger batch: the embeddings agree with the one-at-a-time search to rounding
(tests/test_recovery.py). A small model is limited by per-call overhead at DoRI's batch of 8 and runs several
searches per call faster (benchmarks/recovery_batching.py); a large one gains little and needs the memory of
`searches_per_call` x `batch_size` samples' backward pass.
"""

from __future__ import annotations

import time


def draw_step(gen, batch: int, latent_shape, num_timesteps: int):
    """One search step's draws from `gen`: noise (batch, C, h, w) for latents shaped `latent_shape` (N, C, h, w),
    then timesteps (batch,)."""
    import torch

    noise = torch.randn((batch, *latent_shape[1:]), generator=gen)
    return noise, torch.randint(0, num_timesteps, (batch,), generator=gen)


def predicted_noise(unet, scheduler, z0, noise, t, cond):
    """The model's noise prediction (float32, read as epsilon whatever it predicts) at z0 (N, C, h, w) noised with
    `noise` (N, C, h, w) at timesteps `t` (N,), under text states cond (N, L, D); and `noise` on the UNet's device."""
    from memprune.prediction import signal_noise, to_epsilon

    dev, dt = unet.device, unet.dtype  # noise and timesteps drawn on the CPU generator, the rest on the UNet's device
    z0, noise = z0.float().to(dev), noise.to(dev)
    a, s = signal_noise(scheduler, t, z0)
    x_in = (a * z0 + s * noise).to(dev, dt)
    pred = unet(x_in, t.to(dev), encoder_hidden_states=cond.to(dev, dt)).sample
    return to_epsilon(pred, x_in, t, scheduler), noise


def search_many(unet, scheduler, z0, starts, noise, t, spec):
    """K searches at once: z0 (K, C, h, w) latents, starts (K, L, D), noise (K, steps, B, C, h, w) and t (K, steps,
    B) their draws. Returns (embeddings (K, L, D) float32, loss per search and step (K, steps))."""
    import numpy as np
    import torch

    K, B = len(starts), spec.batch_size
    y = starts.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=spec.lr)
    z = z0.float()[:, None].expand(K, B, *z0.shape[1:]).reshape(K * B, *z0.shape[1:]).to(unet.device)
    losses = np.zeros((K, spec.steps))
    for step in range(spec.steps):
        pred, eps = predicted_noise(unet, scheduler, z, noise[:, step].reshape(K * B, *z0.shape[1:]),
                                    t[:, step].reshape(K * B), y.repeat_interleave(B, 0))
        own = (pred - eps).square().reshape(K, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        own.sum().backward()
        opt.step()
        losses[:, step] = own.detach().cpu().numpy()
    return y.detach(), losses


def batched_searches(pipe, work: list[tuple], spec, per_call: int) -> dict:
    """The searches `work` ([(key, z0 (1, C, h, w), start (1, L, D), noise (steps, B, C, h, w), t (steps, B))],
    their draws made beforehand: `attacks.recovery.predrawn`), `per_call` of them per UNet call. Returns {key:
    (start, found (1, L, D), loss (steps,), seconds)}; a call's seconds are shared equally among its searches."""
    import torch

    found = {}
    for g in range(0, len(work), per_call):
        group = work[g : g + per_call]
        t0 = time.perf_counter()
        with torch.enable_grad():
            ys, losses = search_many(pipe.unet, pipe.scheduler, *(torch.cat([w[i] for w in group]) for i in (1, 2)),
                                     *(torch.stack([w[i] for w in group]) for i in (3, 4)), spec)
        seconds = (time.perf_counter() - t0) / len(group)
        for k, (key, _, start, _, _) in enumerate(group):
            found[key] = (start, ys[k : k + 1], losses[k], seconds)
    return found
