"""Wen et al. (ICLR 2024), the inference-time mitigation: optimise each image's text embedding so that the
text-conditional part of the first step's prediction becomes small (the registry entry is `variants/wen.py`)."""

from __future__ import annotations

import numpy as np

from memprune.prediction import to_epsilon
from memprune.sampling import SamplingConfig, _initial_latents


# Wen et al. (ICLR 2024), "Detecting, explaining, and mitigating memorization in diffusion models": the
# paper's inference-time baseline (its section 5.2). Default target: Wen et al.'s Stable Diffusion setting, 3 for
# the norm taken jointly over 4 images of a prompt, i.e. about 3 / sqrt(4) = 1.5 per image. The testbed's own
# value is in config.yaml (`mitigation.wen.target_loss`; how it was chosen: docs/studies.md).
WEN_TARGET_LOSS = 1.5


def wen_mitigated_embeddings(pipe, prompts: list[str], seeds: list[int], cfg: SamplingConfig, lr: float = 0.05,
                             max_iters: int = 10, target_loss: float | None = WEN_TARGET_LOSS,
                             progress: bool = False, init_embeds=None):
    """Wen et al.'s inference-time mitigation: per image, optimise the prompt's text embedding c so that the
    text-conditional part of the first denoising step's prediction becomes small.

    Loss of image i (one image per (prompt, seed) pair, as in `generate`):
        L_i(c) = || f(x_T^i, t_0, c) - f(x_T^i, t_0, null) ||_2
    the plain L2 norm over (channel, H, W) of the difference of the UNet's conditional and unconditional outputs
    at the first timestep t_0, UNSCALED by the guidance weight (as Wen et al.'s released code, which takes
    `torch.norm(noise_pred_text - noise_pred_uncond, p=2)`; their code takes it over all images of a prompt
    jointly, here each image has its own seed and embedding, so it is per image). f is the noise prediction
    (`memprune.prediction.to_epsilon`): on a v-prediction model (SD2 at 768 px) the raw difference is
    (eps_c - eps_u) / sqrt(alpha_bar_t), about 13x at t = 981, and a target set in epsilon would never be met.
    x_T^i is drawn exactly as `generate` draws it (a CPU generator seeded with seeds[i], `_initial_latents`,
    times the scheduler's init_noise_sigma), so the optimised embedding is used on the noise it was fitted to.

    Optimisation (Wen et al.'s `aug_prompt`): AdamW(lr) on c, at most `max_iters` steps; image i stops as soon
    as L_i <= target_loss (checked before each step; None: never stop early). The first token (BOS, the same
    for every prompt) is held fixed; Wen et al. zero its gradient instead. Images are optimised in batches of
    `cfg.batch_size`, but each has its own parameter in AdamW, so stopping one does not move the others and the
    result does not depend on how the batch was cut.

    `init_embeds` (N, L, D), optional: start from these embeddings instead of the prompts' (e.g. an attacker's).

    Returns (embeds (N, L, D) on the UNet's device, in the text encoder's dtype, to pass as
    `generate(..., prompt_embeds=embeds)`, whose unconditional branch stays the null prompt's embedding;
    info {"initial_loss": (N,), "final_loss": (N,) float64 arrays, "iterations": (N,) int array of AdamW steps
    taken, "converged": (N,) bool (final loss <= target), "timestep": t_0, "lr", "max_iters", "target_loss"}).
    """
    import torch
    from tqdm.auto import tqdm

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if max_iters < 0 or lr <= 0:
        raise ValueError(f"Wen mitigation: need max_iters >= 0 and lr > 0, got {max_iters}, {lr}")
    unet, device = pipe.unet, pipe.unet.device
    pipe.scheduler.set_timesteps(cfg.steps, device=device)
    t0 = pipe.scheduler.timesteps[0]
    with torch.no_grad():
        null = pipe.encode_prompt([""], device, 1, False)[0]  # (1, L, D)
    n = len(prompts)
    initial, final = np.full(n, np.nan), np.full(n, np.nan)
    iterations = np.zeros(n, dtype=np.int64)
    out = []
    for start in tqdm(range(0, n, cfg.batch_size), desc="wen mitigation", disable=not progress):
        sl = slice(start, start + cfg.batch_size)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[sl]]
        x_t = pipe.scheduler.scale_model_input(_initial_latents(pipe, gens, cfg) * pipe.scheduler.init_noise_sigma, t0)
        with torch.no_grad():
            cond = (pipe.encode_prompt(list(prompts[sl]), device, 1, False)[0] if init_embeds is None
                    else init_embeds[sl].to(device))  # (b, L, D); init_embeds: start from given embeddings
            uncond_out = to_epsilon(unet(x_t, t0,
                                         encoder_hidden_states=null.expand(len(cond), -1, -1).to(unet.dtype)).sample,
                                    x_t, t0, pipe.scheduler)
        bos = cond[:, :1].float()
        # One leaf per image: AdamW skips parameters without a gradient, so a stopped image stays put.
        tokens = [cond[i : i + 1, 1:].float().clone().requires_grad_(True) for i in range(len(cond))]
        optimizer = torch.optim.AdamW(tokens, lr=lr)
        active = list(range(len(cond)))
        for step in range(max_iters + 1):
            with torch.enable_grad():
                embeds = torch.cat([torch.cat([bos[i : i + 1], tokens[i]], dim=1) for i in active])
                cond_out = to_epsilon(unet(x_t[active], t0, encoder_hidden_states=embeds.to(unet.dtype)).sample,
                                      x_t[active], t0, pipe.scheduler)
                losses = (cond_out - uncond_out[active]).flatten(1).norm(dim=1)  # (active,)
            values = losses.detach().cpu().numpy().astype(np.float64)
            for k, i in enumerate(active):
                if step == 0:
                    initial[start + i] = values[k]
                final[start + i] = values[k]
            keep = [k for k in range(len(active)) if target_loss is None or values[k] > target_loss]
            if step == max_iters or not keep:
                break
            grads = torch.autograd.grad(losses[keep].sum(), [tokens[active[k]] for k in keep])
            for tok in tokens:
                tok.grad = None
            for k, g in zip(keep, grads):
                tokens[active[k]].grad = g
            optimizer.step()
            active = [active[k] for k in keep]
            for i in active:
                iterations[start + i] += 1
        with torch.no_grad():
            out.append(torch.cat([bos, torch.cat([t.detach() for t in tokens])], dim=1).to(cond.dtype))
    embeds = torch.cat(out) if out else torch.zeros((0, 0, 0))
    info = {
        "initial_loss": initial, "final_loss": final, "iterations": iterations,
        "converged": final <= target_loss if target_loss is not None else np.zeros(n, dtype=bool),
        "timestep": float(t0), "lr": lr, "max_iters": max_iters, "target_loss": target_loss,
    }
    return embeds, info
