"""NeMo (Hintersdorf et al., NeurIPS 2024; code ml-research/localizing_memorization_in_diffusion_models): per
memorized prompt, the few output channels ("neurons") of the cross-attention value layers (`attn2.to_v` of the
down blocks and the mid block) whose deactivation stops the prompt's memorized first-step prediction.

The search (`nemo_search`, run per prompt by `memprune nemo`, stored per collection as data) follows the
released code (ml-research/localizing_memorization_in_diffusion_models), point by point:
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

import logging
import time

import numpy as np

from memprune.localize import Localizer, pack
from memprune.localize.nemo_probe import Probe, blocking, pairwise_max, ssim  # noqa: F401 (the method's names)
from memprune.formats.masks import MaskSet
from memprune.errors import InputError

log = logging.getLogger(__name__)

DEFAULTS = {"theta": 5.0, "theta_step": 0.25, "theta_min": 1.0, "k": 0, "seeds": 10, "seed": 0, "steps": 50,
            "step_index": 1, "max_refine": 200, "max_calibration": 200, "calibration": ["nonmemorized"]}
PARAM_DOCS = {
    "theta": {"description": "initial z-score threshold", "exclusiveMinimum": 0},
    "theta_step": {"description": "theta is lowered by this per round", "exclusiveMinimum": 0},
    "theta_min": {"description": "theta's floor", "exclusiveMinimum": 0},
    "k": {"description": "initial top-k channels per layer by activation, +1 per round", "minimum": 0},
    "seeds": {"description": "seeds of the noise difference", "minimum": 2},
    "seed": "first seed",
    "steps": {"description": "the scheduler's steps", "minimum": 1},
    "step_index": {"description": "the timestep index the noise difference is taken at (1: the 2nd)", "minimum": 0},
    "max_refine": {"description": "cost cap: initial sets larger than this skip the neuron-by-neuron refinement",
                   "minimum": 0},
    "max_calibration": {"description": "calibration prompts used (a seeded draw)", "minimum": 2},
    "calibration": {"description": "non-memorized prompt sets: activation statistics and the memorization threshold",
                    "minItems": 1},
}


def value_layers(unet) -> list:
    """[(name, Linear)]: `attn2.to_v` of every cross-attention in the down blocks, then the mid block (NeMo's
    layers; SD1.x: 7 layers, 5,760 channels), found by module type and execution order."""
    from diffusers.models.attention_processor import Attention

    found = []
    for name, module in unet.named_modules():
        if (isinstance(module, Attention) and module.is_cross_attention
                and name.startswith(("down_blocks.", "mid_block."))):
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


class _Decider:
    """Decides `similarity(blocked) < level` (similarity: the max over the looked-at seeds) for a chain of tests,
    each from the outcomes before it, as early as the values allow: above the level once one seed is, below once
    every seed is. A test guessed "above" first tries its likeliest seed, then the others; one guessed "below" and
    a `full` one (whose value is kept) take every seed at once (on the testbeds most neurons are dropped: trying
    one seed first cost more samples than it saved). A UNet call holds the open test's seeds and, as far as the
    batch goes, those of the tests that follow when the tests before them go as guessed. Values are memoised per
    (blocked, seed), so a wrong guess costs only its samples; the outcomes are those of evaluating the tests one
    after another."""

    def __init__(self, probe, look):
        self.probe, self.order = probe, list(look)  # seeds, the likeliest to reach a level first

    def outcome(self, blocked: frozenset, level: float, full: bool):
        values = [self.probe.value(blocked, s) for s in self.order]
        known = [v for v in values if v is not None]
        if len(known) == len(values):
            return max(known) < level
        return False if not full and any(v >= level for v in known) else None

    def value(self, blocked: frozenset) -> float:
        return max(self.probe.value(blocked, s) for s in self.order)

    def run(self, state, step, level: float):
        """`step(state)` -> None at the chain's end, or (blocked, full, guess, advance), `advance(below)` giving
        the next state. Returns the end state."""
        while True:
            while (test := step(state)) is not None and (below := self.outcome(test[0], level, test[1])) is not None:
                state = test[3](below)
            if test is None:
                return state
            pairs, s = [], state
            while len(pairs) < self.probe.batch and (test := step(s)) is not None:
                blocked, full, guess, advance = test
                below = self.outcome(blocked, level, full)
                if below is None:
                    pending = [x for x in self.order if self.probe.value(blocked, x) is None]
                    take = pending if full or guess or (s is state and len(pending) < len(self.order)) else pending[:1]
                    pairs += [(blocked, x) for x in take[: self.probe.batch - len(pairs)]]
                    below = guess
                s = advance(below)
            values = self.probe.similarities(pairs)
            best = pairs[int(np.argmax(values))][1]
            self.order.remove(best)
            self.order.insert(0, best)


def _select(decider, sets: list[frozenset], threshold: float) -> int:
    """The selection: the first round whose similarity falls below the threshold, else the last (the floor)."""
    def step(r):
        if r is None or r[1]:
            return None
        last = r[0] == len(sets) - 1
        return sets[r[0]], last, False, lambda below: (r[0], True) if below or last else (r[0] + 1, False)
    return decider.run((0, False), step, threshold)[0]


def _refine(decider, blocked: frozenset, items: list[frozenset], level: float, guess: bool) -> frozenset:
    """Unblock each item in turn (a layer's channels, or one neuron), for good when the similarity stays below
    `level`."""
    def step(state):
        j, current = state
        if j == len(items):
            return None
        return current - items[j], False, guess, lambda below: (j + 1, current - items[j] if below else current)
    return decider.run((0, blocked), step, level)[1]


def nemo_search(probe: Probe, embed, activation: np.ndarray, z: np.ndarray, threshold: float, params: dict) -> dict:
    """NeMo's search for one prompt (`embed` (1, tokens, dim), its activation and z-scores over the
    concatenated channels). Returns {memorized, score, looked_at, initial, initial_similarity, theta, k, rounds,
    refined, refined_similarity, score_blocked, refine_capped, runs, samples, seconds}; neuron sets as sorted
    global channel indices. The decisions are those of evaluating each candidate set on its own, in order."""
    start, runs0, samples0 = time.perf_counter(), probe.runs, probe.samples
    reference = probe.deltas(embed)
    per_seed = pairwise_max(reference)
    score = float(per_seed.max())
    look = per_seed >= threshold
    if not look.any():  # under the threshold (not memorized): search on the seed of the highest score
        look = per_seed == per_seed.max()
    probe.start(embed, reference)
    decider = _Decider(probe, sorted(np.nonzero(look)[0].tolist(), key=lambda s: -per_seed[s]))
    layer_slices = [slice(probe.offsets[i], probe.offsets[i + 1]) for i in range(len(probe.layers))]
    if params["theta_step"] <= 0 and params["theta"] > params["theta_min"]:
        raise InputError("config key localizers.nemo.theta_step: must be > 0 (theta decreases to theta_min)")
    rounds = []  # (theta, k, set) per round: the selection lowers theta and raises k until the floor
    theta, k = float(params["theta"]), int(params["k"])
    while True:
        chosen = set(np.nonzero(z > theta)[0].tolist())
        for sl in layer_slices:
            top = np.argsort(-activation[sl], kind="stable")[: min(k, sl.stop - sl.start)]
            chosen.update((top + sl.start).tolist())
        rounds.append((theta, k, frozenset(chosen)))
        if theta <= params["theta_min"]:
            break
        theta, k = max(theta - params["theta_step"], params["theta_min"]), k + 1
    last = _select(decider, [r[2] for r in rounds], threshold)
    theta, k, chosen = rounds[last]
    initial, initial_similarity = sorted(chosen), decider.value(chosen)
    refine_at = threshold if initial_similarity < threshold else initial_similarity
    in_layers = [frozenset(c for c in chosen if sl.start <= c < sl.stop) for sl in reversed(layer_slices)]
    blocked = _refine(decider, chosen, [s for s in in_layers if s], refine_at, guess=False)  # layers, last first
    capped = len(blocked) > params["max_refine"]
    if not capped:  # neurons, last layer first
        blocked = _refine(decider, blocked, [frozenset([c]) for c in sorted(blocked, reverse=True)], refine_at,
                          guess=True)
    refined = sorted(blocked)
    after = probe.deltas(embed, refined)
    return {"memorized": bool(score >= threshold), "score": score, "looked_at": int(look.sum()),
            "initial": initial, "initial_similarity": initial_similarity, "theta": theta, "k": k,
            "rounds": last + 1, "refined": refined,
            "refined_similarity": float(ssim(reference[look], after[look]).max()),
            "score_blocked": float(pairwise_max(after).max()), "refine_capped": capped,
            "runs": probe.runs - runs0, "samples": probe.samples - samples0, "seconds": time.perf_counter() - start}


def locate(inputs, params):
    """A subset's NeMo neurons: the union of its prompts' refined sets (`inputs.neurons`, from `memprune nemo`)."""
    ds, wanted = inputs.neurons, set(inputs.subset_indices or ())
    if ds is None:
        raise InputError("localizer nemo: no per-prompt neurons (run `memprune nemo` first)")
    if list(ds.attrs["layers"]) != list(inputs.weights):
        raise InputError(f"localizer nemo: the neurons' layers {list(ds.attrs['layers'])[:2]} are not the model's")
    members = np.isin(ds["pool_index"].values, list(wanted))
    if int(members.sum()) != len(wanted):
        raise InputError(f"localizer nemo: {len(wanted) - int(members.sum())} prompt(s) of the subset were not "
                         "searched")
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


LOCALIZER = Localizer(name="nemo", description="NeMo (Hintersdorf et al. 2024): per prompt, the attn2.to_v output "
                                              "channels of the down and mid blocks whose zeroing stops its memorized "
                                              "first-step prediction; masks: the subsets' unions",
                      locate=locate, defaults=dict(DEFAULTS), param_docs=PARAM_DOCS, observes=value_layers,
                      uses_timesteps=False, per_prompt=True)

