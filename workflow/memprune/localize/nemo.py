"""NeMo (Hintersdorf et al., NeurIPS 2024; code ml-research/localizing_memorization_in_diffusion_models): per
memorized prompt, the few output channels ("neurons") of the cross-attention value layers (`attn2.to_v` of the
down blocks and the mid block) whose deactivation stops the prompt's memorized first-step prediction.

The search (`nemo_search`, run per prompt by `memprune nemo`, stored per collection as data) follows the
released code, point by point (`../shared/METHODS.md`):
  activation  a_c = mean over the token positions of |to_v(text embedding)|_c, text only;
              z_c = |a_c - mean_c| / std_c against non-memorized calibration prompts (`nemo_calibrate`);
  delta       eps(x_T, t, y) - x_T without guidance at the `step_index`-th timestep of `steps` (the code: the
              2nd of 50, on the initial noise), min-max normalised per (seed, channel), for `seeds` seeds;
  score       per seed, the max SSIM of its delta to the other seeds'; the prompt's memorization score is the
              max over seeds; memorized when it reaches the threshold (mean + 1 sd of the calibration
              prompts' scores); the seeds above it are the ones the search looks at (as the code);
  similarity  of a blocked model: max over those seeds of SSIM(delta unblocked, delta blocked) (the code's
              criterion in both the selection and the refinement);
  selection   block {z > theta} + the top-k channels per layer by activation, theta = 5, k = 0; while the
              similarity stays at or above the threshold, theta -= 0.25 (floor 1) and k += 1;
  refinement  layer by layer (last to first): unblock a layer's set and drop it if the similarity stays below
              the threshold; then neuron by neuron the same.
Where this differs from the code, and why:
  * SSIM, not multi-scale SSIM: MS-SSIM's three scales need latents larger than 40 px (the testbed's are 8 px).
    The window is 11 px (sigma 1.5, the code's kernel) where the latent allows, else the largest odd size
    below it (sigma scaled); the threshold is calibrated on the same measure, per model.
  * The code stops the selection after the round that lowers theta to its floor without evaluating it; here
    the floor is evaluated too, and when the similarity is still above the threshold there, the refinement
    uses that similarity as its threshold (as the code does).
  * Prompts under the memorization threshold are searched too (the code skips them) and flagged
    (`memorized`): the non-memorized control collection of the IOU analysis needs their neuron sets.
  * `max_refine` caps the neuron-by-neuron refinement (the costly part: one model run per neuron); a larger
    initial set keeps its layer-refined form, flagged `refine_capped`.
A subset's neurons are the union of its prompts' refined sets; the edit zeroes those rows of `to_v.weight`
(SD's and the testbed's `to_v` have no bias; a bias would be zeroed too: `edits.apply`, kind "rows").
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from memprune.localize import Localizer, pack
from memprune.formats.masks import MaskSet
from memprune.errors import InputError

log = logging.getLogger(__name__)

DEFAULTS = {"theta": 5.0, "theta_step": 0.25, "theta_min": 1.0, "k": 0, "seeds": 10, "seed": 0, "steps": 50,
            "step_index": 1, "max_refine": 200, "max_calibration": 200, "calibration": ["nonmemorized"]}


def value_layers(unet) -> list:
    """[(name, Linear)]: `attn2.to_v` of every cross-attention in the down blocks, then the mid block (NeMo's
    layers; SD1.x: 7 layers, 5,760 channels), found by module type and execution order."""
    from diffusers.models.attention_processor import Attention

    found = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention and name.startswith(("down_blocks.", "mid_block.")):
            if getattr(module, "norm_cross", None) is not None:
                raise InputError(f"nemo: {name} normalises its text input: to_v's activation is not to_v(text)")
            found.append((f"{name}.to_v", module.to_v))
    found.sort(key=lambda item: (not item[0].startswith("down_blocks."), item[0]))
    if not found:
        raise InputError("nemo: the UNet has no cross-attention in its down or mid blocks")
    return found


def text_activations(layers: list, embeds) -> np.ndarray:
    """(N, channels) float64: per prompt and channel of all `layers` (concatenated in order), the mean over
    token positions of |to_v(embeds)|. `embeds` (N, tokens, dim) are the text encoder's outputs."""
    import torch

    with torch.no_grad():
        return np.concatenate([lin(embeds.to(lin.weight.dtype)).abs().mean(1).double().cpu().numpy()
                               for _, lin in layers], axis=1)


def zscores(act: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """|act - mean| / std per channel; a channel without spread scores 0 where it equals the mean, inf elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(act - mean) / std
    return np.where(np.isnan(z), 0.0, z)


def threshold_of(scores: np.ndarray) -> float:
    """NeMo's memorization threshold: mean + 1 standard deviation of non-memorized prompts' scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size < 2 or not np.isfinite(scores).all():
        raise InputError(f"nemo: the threshold needs >= 2 finite calibration scores, got {scores.size}")
    return float(scores.mean() + scores.std(ddof=1))


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
    handles = []
    offsets = np.cumsum([0] + [lin.out_features for _, lin in layers])
    channels = np.asarray(sorted(channels), dtype=np.int64)
    for li, (_, lin) in enumerate(layers):
        local = (channels[(channels >= offsets[li]) & (channels < offsets[li + 1])] - offsets[li]).tolist()
        if local:
            def hook(module, inputs, out, idx=local):
                out = out.clone()
                out[..., idx] = 0
                return out
            handles.append(lin.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Probe:
    """The first-step noise difference of one model for a fixed set of seeds, with channels blocked on demand.
    `runs` counts UNet evaluations (the search's cost)."""

    def __init__(self, unet, scheduler, layers: list, seeds: list[int], steps: int, step_index: int):
        import torch

        self.unet, self.layers = unet, layers
        self.names = [n for n, _ in layers]
        self.offsets = np.cumsum([0] + [lin.out_features for _, lin in layers])
        scheduler.set_timesteps(steps)
        if not 0 <= step_index < len(scheduler.timesteps):
            raise InputError(f"nemo: step_index {step_index} outside the {len(scheduler.timesteps)} timesteps")
        self.t = scheduler.timesteps[step_index]
        cfg = unet.config
        shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        dev, dt = unet.device, unet.dtype
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        self.x = (noise * scheduler.init_noise_sigma).to(dev, dt)
        self.x_in = scheduler.scale_model_input(self.x, self.t)
        self.runs = 0

    def blocking(self, channels):
        return blocking(self.layers, channels)

    def deltas(self, embed, blocked=()):
        """(S, C, H, W) float32 in [0, 1]: eps(x_T, t, y) - x_T, min-max normalised per (seed, channel)."""
        import torch

        with torch.no_grad(), self.blocking(blocked):
            eps = self.unet(self.x_in, self.t, encoder_hidden_states=embed.expand(len(self.x), -1, -1).to(self.unet.dtype)).sample
        self.runs += 1
        d = (eps - self.x).float()
        lo, hi = d.amin(dim=(2, 3), keepdim=True), d.amax(dim=(2, 3), keepdim=True)
        return ((d - lo) / (hi - lo).clamp_min(1e-12)).cpu()


def _similarity(probe, embed, reference, look, blocked) -> float:
    return float(ssim(reference[look], probe.deltas(embed, blocked)[look]).max())


def nemo_search(probe: Probe, embed, activation: np.ndarray, z: np.ndarray, threshold: float, params: dict) -> dict:
    """NeMo's search for one prompt (`embed` (1, tokens, dim), its activation and z-scores over the
    concatenated channels). Returns {memorized, score, looked_at, initial, initial_similarity, theta, k, rounds,
    refined, refined_similarity, score_blocked, refine_capped, runs, seconds}; neuron sets as sorted global
    channel indices."""
    start, runs0 = time.perf_counter(), probe.runs
    reference = probe.deltas(embed)
    per_seed = pairwise_max(reference)
    score = float(per_seed.max())
    look = per_seed >= threshold
    if not look.any():  # under the threshold (not memorized): search on the seed of the highest score
        look = per_seed == per_seed.max()
    theta, k, rounds = float(params["theta"]), int(params["k"]), 0
    layer_slices = [slice(probe.offsets[i], probe.offsets[i + 1]) for i in range(len(probe.layers))]
    while True:
        chosen = set(np.nonzero(z > theta)[0].tolist())
        for sl in layer_slices:
            top = np.argsort(-activation[sl], kind="stable")[: min(k, sl.stop - sl.start)]
            chosen.update((top + sl.start).tolist())
        similarity = _similarity(probe, embed, reference, look, chosen)
        rounds += 1
        floor = theta <= params["theta_min"]
        if similarity < threshold or floor:
            break
        theta = max(theta - params["theta_step"], params["theta_min"])
        k += 1
    initial, initial_similarity = sorted(chosen), similarity
    refine_at = threshold if similarity < threshold else similarity
    blocked = set(initial)
    for sl in reversed(layer_slices):  # layers, last to first
        in_layer = {c for c in blocked if sl.start <= c < sl.stop}
        if in_layer and _similarity(probe, embed, reference, look, blocked - in_layer) < refine_at:
            blocked -= in_layer
    capped = len(blocked) > params["max_refine"]
    if not capped:
        for c in sorted(blocked, reverse=True):  # neurons, last layer first
            if _similarity(probe, embed, reference, look, blocked - {c}) < refine_at:
                blocked.discard(c)
    refined = sorted(blocked)
    after = probe.deltas(embed, refined)
    return {"memorized": bool(score >= threshold), "score": score, "looked_at": int(look.sum()),
            "initial": initial, "initial_similarity": initial_similarity, "theta": theta, "k": k, "rounds": rounds,
            "refined": refined, "refined_similarity": float(ssim(reference[look], after[look]).max()),
            "score_blocked": float(pairwise_max(after).max()), "refine_capped": capped,
            "runs": probe.runs - runs0, "seconds": time.perf_counter() - start}


def locate(inputs, params):
    """A subset's NeMo neurons: the union of its prompts' refined sets (`inputs.neurons`, from `memprune nemo`)."""
    ds, wanted = inputs.neurons, set(inputs.subset_indices or ())
    if ds is None:
        raise InputError("localizer nemo: no per-prompt neurons (run `memprune nemo` first)")
    if list(ds.attrs["layers"]) != list(inputs.weights):
        raise InputError(f"localizer nemo: the neurons' layers {list(ds.attrs['layers'])[:2]} are not the model's")
    members = np.isin(ds["pool_index"].values, list(wanted))
    if int(members.sum()) != len(wanted):
        raise InputError(f"localizer nemo: {len(wanted) - int(members.sum())} prompt(s) of the subset were not searched")
    union_all = ds["refined"].values[members].any(axis=0)
    union, start = {}, 0
    for layer, w in inputs.weights.items():
        union[layer] = pack(union_all[start : start + w.shape[0]][None, :])
        start += w.shape[0]
    prompts = [str(p) for p in ds["prompt"].values[members]]
    return MaskSet(layers=list(inputs.weights), kinds={l: "rows" for l in inputs.weights},
                   grid={l: (1, int(w.shape[0])) for l, w in inputs.weights.items()}, union=union,
                   attrs={"prompts": prompts, "n_prompts": len(prompts),
                          "threshold": float(ds.attrs["threshold"]),
                          "memorized_prompts": int(ds["memorized"].values[members].sum())})


LOCALIZER = Localizer(name="nemo", description="NeMo: per-prompt cross-attention value neurons (attn2.to_v rows)",
                      locate=locate, defaults=dict(DEFAULTS), observes=value_layers, uses_timesteps=False,
                      per_prompt=True)

