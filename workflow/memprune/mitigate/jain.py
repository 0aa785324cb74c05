"""Jain et al. (CVPR 2025), "Classifier-free guidance inside the attraction basin may cause memorization": the
inference-time mitigation withholds guidance while the trajectory is inside the attraction basin, and applies the
sampling guidance once it has left it (the registry entry is `variants/jain.py`).

Three modes, each the guidance of step t as a function of where the transition point lies:

* `static` (their `generate_test_dataset_stp.py --guidance_change_step 500 --guidance_scale 0.0
  --guidance_scale_later 7.5`): guidance `guidance_before` (0: the unconditional prediction alone) while the
  timestep t > `transition_t` (500 of the 1000 training steps), the sampling guidance from there on;
* `opposite` (the same script, `--guidance_change_step 650 --guidance_scale -2.0`): the same rule with a
  negative guidance before the point (t > 650), which pushes the trajectory away from the prompt's basin;
* `dynamic` (their `generate_test_dataset_dtp.py`): per image, d_j = ||f(x_j, c) - f(x_j, null)||_2 (the norm
  of the conditional-unconditional difference over the whole latent) is followed step by step, with guidance
  `guidance_before` (their 1.0: the conditional prediction alone) until d has passed a local minimum: the first
  step j >= 2 with d_j > d_{j-1} < d_{j-2}; from that step j on (itself included) the sampling guidance.

Point by point against the released scripts:
- the combination is theirs: f_u + g (f_c - f_u), both branches computed at every step, the null prompt ""
  as the unconditional text, on the model's own output (epsilon or v), which the scheduler steps with;
- the dynamic mode's difference d_j is taken on the noise prediction (`memprune.prediction.to_epsilon`), so a
  v-prediction model finds the same transition as the same model written in epsilon;
- "the sampling guidance" after the point is the config's `sampling.guidance` (their 7.5 for Stable Diffusion);
  the testbed's own guidance is 2;
- differs: when a timestep equals the static transition point exactly, their script switches the scheduler to
  200 steps for the rest of the trajectory (`set_timesteps(200)` and a jump of its step index); here the
  schedule stays the configured one (`sampling.steps`), the same for every mode and for plain sampling, so that
  guidance alone differs. (With Stable Diffusion's "leading" spacing and steps_offset 1 the timesteps are odd,
  so t == 500 never happens and their switch does not fire either.)
- differs: their scripts seed one global generator; here every image has its own seeded generator and starting
  noise, drawn as `memprune.sampling.generate` draws it, so a mitigated image and a plain one share x_T;
- their dynamic script decides per batch of one image; here per image within a batch (the same for batch 1);
  an image whose difference never turns (no local minimum) keeps `guidance_before` to the end, as theirs.
- their opposite-guidance script with a dynamic point (`generate_test_dataset-opposite_guidance.py`) finds the
  point from a first, unguided pass, but exits after printing it (an `exit(0)` at the point); only the static
  opposite form of their README is implemented.
"""

from __future__ import annotations

import numpy as np

from memprune.prediction import to_epsilon
from memprune.sampling import SamplingConfig, _initial_latents

MODES = ("static", "opposite", "dynamic")


def static_guidance(t: float, transition_t: float, before, after):
    """`before` while the timestep t > transition_t, `after` from there on (their `t > change_step`)."""
    return before if float(t) > transition_t else after


def turned(diffs: list[float]) -> bool:
    """Their dynamic transition test on the differences so far (d_0 .. d_j): d_j > d_{j-1} and d_{j-2} > d_{j-1}."""
    return len(diffs) >= 3 and diffs[-1] > diffs[-2] and diffs[-3] > diffs[-2]


def guided_sample(pipe, embeds, seeds: list[int], cfg: SamplingConfig, mode: str = "static",
                  transition_t: float = 500.0,
                  guidance_before: float = 0.0) -> tuple[np.ndarray, dict]:
    """Images (N, H, W, 3) uint8 from text embeddings `embeds` (N, L, D) with Jain et al.'s guidance schedule
    (`mode`, see the module docstring; `transition_t` is read by static and opposite, `guidance_before` by all);
    the guidance after the point is `cfg.guidance`. Image i starts from the noise `generate` draws for seeds[i].

    Returns (images, info) with info {"transition_step": (N,) int, the first step index with the sampling guidance
    (-1: never), "transition_t": (N,) float, its timestep (NaN: never)}.
    """
    import torch

    if mode not in MODES:
        raise ValueError(f"Jain et al.: unknown mode {mode!r}; known: {list(MODES)}")
    if len(embeds) != len(seeds):
        raise ValueError(f"{len(embeds)} embeddings but {len(seeds)} seeds")
    unet, device, sched = pipe.unet, pipe.unet.device, pipe.scheduler
    with torch.no_grad():
        null = pipe.encode_prompt([""], device, 1, False)[0]  # (1, L, D)
    out, steps_at, t_at = [], np.full(len(seeds), -1, dtype=np.int64), np.full(len(seeds), np.nan)
    for start in range(0, len(seeds), cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[sl]]
        cond = embeds[sl].to(device=device, dtype=unet.dtype)
        states = torch.cat([null.expand(len(cond), -1, -1).to(unet.dtype), cond])  # the pipeline's order: uncond, cond
        sched.set_timesteps(cfg.steps, device=device)
        latents = _initial_latents(pipe, gens, cfg) * sched.init_noise_sigma
        extra = pipe.prepare_extra_step_kwargs(gens, 0.0)
        diffs = [[] for _ in range(len(cond))]
        switched = [False] * len(cond)
        with torch.inference_mode():
            for j, t in enumerate(sched.timesteps):
                model_in = sched.scale_model_input(torch.cat([latents] * 2), t)
                pred_uncond, pred_text = unet(model_in, t, encoder_hidden_states=states, return_dict=False)[0].chunk(2)
                if mode == "dynamic":
                    eps_uncond, eps_text = to_epsilon(torch.cat([pred_uncond, pred_text]), model_in, t, sched).chunk(2)
                    d = (eps_uncond - eps_text).flatten(1).norm(dim=1).tolist()
                    for i in range(len(cond)):
                        diffs[i].append(d[i])
                        switched[i] = switched[i] or turned(diffs[i])
                else:  # static, opposite: their `t > change_step` keeps the guidance before the point
                    switched = [static_guidance(t, transition_t, False, True)] * len(cond)
                for i in range(len(cond)):
                    if switched[i] and steps_at[start + i] < 0:
                        steps_at[start + i], t_at[start + i] = j, float(t)
                g = torch.tensor([cfg.guidance if s else guidance_before for s in switched], dtype=pred_text.dtype,
                                 device=device).view(-1, 1, 1, 1)
                noise = pred_uncond + g * (pred_text - pred_uncond)
                latents = sched.step(noise, t, latents, **extra, return_dict=False)[0]
            images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            images = pipe.image_processor.postprocess(images, output_type="np", do_denormalize=[True] * len(images))
        out.append((np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8))
    images = np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
    return images, {"transition_step": steps_at, "transition_t": t_at}
