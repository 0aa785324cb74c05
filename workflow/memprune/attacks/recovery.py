"""Is it gone? The recovery attack of "Finding Dori" (Kowalczuk, Hintersdorf, Struppek et al., ICML 2026): for a
model variant and a training image x_0, optimise a text-conditioning embedding y (the text encoder's output, what
cross-attention reads) to minimise the variant's denoising loss on that image,

    L(y) = || eps - eps_theta(sqrt(a_t) z_0 + sqrt(1 - a_t) eps, t, y) ||^2,   z_0 = VAE(x_0),

with fresh noise eps and timesteps t drawn every step, eps_theta the model's noise prediction
(`memprune.prediction.to_epsilon`; on a v-prediction model the v loss would be this one times 1 / a_t, a weight
that depends on how the model is written, not on what it computes), by
Adam (DoRI: lr 0.1, 50 steps, batch 8), starting from the original prompt's embedding (or an unrelated prompt's,
or random: `INITS`). Then generate from y with several seeds and score copy similarity to x_0 with the
evaluation's metric and threshold: a target is recovered when most seeds copy it. MR (memorization rate) of a
variant = share of its targets recovered. The same seeds also generate from the starting embedding (for the
prompt start: the original prompt), so "copy rate of the original prompt" and "MR after recovery" come from one run.

The variant is loaded through the registry (`memprune.variants`), so every model the plan compares can be
attacked. An inference-time mitigation (Wen et al.) is not part of the UNet the attacker optimises against: the
search runs on its UNet (the unedited one) and the variant's `generate_embeds` then applies the mitigation on top
of the found embedding, as a deployed mitigation would. Its searches are then the unedited model's, step for
step, so `searches` (`run_variant(searches_from=...)`, `recover --searches-from`) reuses them from that model's
recovery file (which stores every start and found embedding) instead of running them again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from memprune.errors import InputError

log = logging.getLogger(__name__)

INITS = ("prompt", "unrelated", "random")


@dataclass
class RecoverySpec:
    steps: int = 50  # DoRI: Adam, lr 0.1, 50 steps, batch 8
    lr: float = 0.1
    batch_size: int = 8
    seed: int = 0  # noise and timesteps of the search; random starts
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3])  # generation seeds after the search
    sample_steps: int = 20
    guidance: float = 2.0
    copy_threshold: float = 0.4


def image_latent(pipe, image: np.ndarray):
    """(1, C, h, w) scaled posterior mean of one (H, W, 3) uint8 image."""
    import torch

    from memprune.testbed.dataset import images_to_tensor

    x = images_to_tensor(image[None]).to(pipe.vae.device, pipe.vae.dtype)
    with torch.no_grad():
        return pipe.vae.encode(x).latent_dist.mean.float() * pipe.vae.config.scaling_factor


def embed(pipe, prompts: list[str]):
    from memprune.sampling import text_embeddings

    return text_embeddings(pipe, prompts).float()


def start_embedding(pipe, init: str, prompt: str, unrelated: str, reference, gen):
    """The search's start: the prompt's embedding, an unrelated prompt's, or Gaussian noise with the per-(token,
    dim) mean and sd of `reference` (embeddings of real prompts)."""
    import torch

    if init == "prompt":
        return embed(pipe, [prompt])
    if init == "unrelated":
        return embed(pipe, [unrelated])
    if init == "random":
        mean, std = reference.mean(0, keepdim=True), reference.std(0, keepdim=True)
        return mean + std * torch.randn(mean.shape, generator=gen).to(mean.device)
    raise InputError(f"recovery: unknown init {init!r}; known: {list(INITS)}")


def denoising_loss(unet, scheduler, z0, cond, gen):
    """The noise-prediction loss on latents z0 (N, C, h, w) under text states cond (N, L, D): fresh noise, then
    timesteps, drawn from `gen`; the model's output is read as epsilon whatever it predicts."""
    import torch.nn.functional as F

    from memprune.attacks.recovery_batch import draw_step, predicted_noise

    noise, t = draw_step(gen, len(z0), z0.shape, scheduler.config.num_train_timesteps)
    return F.mse_loss(*predicted_noise(unet, scheduler, z0, noise, t, cond))


def search(unet, scheduler, z0, start, spec: RecoverySpec, gen, on_step=None):
    """DoRI's search: returns (embedding (1, L, D) float32, loss per step (steps,)). `on_step(k, y)`, when given,
    sees the embedding after each step k = 1 .. steps: Adam at a fixed lr does not depend on how many steps follow,
    so it is the k-step search's result (benchmarks/recovery_calibration.py reads several budgets off one search)."""
    import torch

    y = start.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=spec.lr)
    losses = np.zeros(spec.steps)
    z0 = z0.float().expand(spec.batch_size, -1, -1, -1)
    for step in range(spec.steps):
        loss = denoising_loss(unet, scheduler, z0, y.expand(spec.batch_size, -1, -1), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = loss.item()
        if on_step is not None:
            on_step(step + 1, y.detach())
    return y.detach(), losses


def skip_draws(gen, n_targets: int, inits: list[str], spec: RecoverySpec, latent_shape, embedding_shape,
               num_timesteps: int) -> None:
    """Advance `gen` past what `attack_targets` draws for `n_targets` searched targets (a random start's noise,
    then each search step's noise and timesteps, as `start_embedding` and `denoising_loss` draw them) without
    running the model, so a chunk of the targets draws what the whole run draws for them."""
    import torch

    from memprune.attacks.recovery_batch import draw_step

    for _ in range(n_targets):
        for init in inits:
            if init == "random":
                torch.randn(embedding_shape, generator=gen)
            for _ in range(spec.steps):
                draw_step(gen, spec.batch_size, latent_shape, num_timesteps)


def predrawn(pipe, targets: list[dict], inits: list[str], spec: RecoverySpec, reference, gen) -> list[tuple]:
    """Every (target, start) search's inputs and draws, drawn from `gen` in the order the searches one at a time
    draw them: [((target index, init index), z0, start, noise (steps, B, C, h, w), t (steps, B))]."""
    import torch

    from memprune.attacks.recovery_batch import draw_step

    work, num_timesteps = [], pipe.scheduler.config.num_train_timesteps
    for ti, target in enumerate(targets):
        z0 = image_latent(pipe, target["image"])
        for ii, init in enumerate(inits):
            start = start_embedding(pipe, init, target["prompt"], target["unrelated"], reference, gen)
            draws = [draw_step(gen, spec.batch_size, z0.shape, num_timesteps) for _ in range(spec.steps)]
            work.append(((ti, ii), z0, start, *(torch.stack([d[i] for d in draws]) for i in (0, 1))))
    return work


def attack_targets(pipe, variant, params: dict, targets: list[dict], inits: list[str], spec: RecoverySpec,
                   reference_prompts: list[str], progress: bool = False, searches: dict | None = None,
                   metric=None, height: int | None = None, width: int | None = None, skip: int = 0,
                   per_call: int = 1) -> dict:
    """Run the search for every (target, init) against `pipe` and generate from the start and the found
    embedding with `spec.seeds`, at `height` x `width` pixels (None: the model's resolution). `targets`: {prompt,
    group, image (H, W, 3) uint8, unrelated}. `searches`: the searches already run against this UNet ({embedding
    (T, I, 2, L, D): start and found, loss, seconds}, from `read_searches`), used instead of running them again.
    `metric`: the copy metric that scores the generations (`evaluate.copies.CopyMetric`; None: SSIM at
    `spec.copy_threshold`). `per_call`: searches per UNet call (`attacks.recovery_batch`). Returns arrays."""
    import torch
    from tqdm.auto import tqdm

    from memprune.evaluate.copies import CopyMetric
    from memprune.sampling import SamplingConfig

    metric = metric if metric is not None else CopyMetric(spec.copy_threshold)
    cfg = SamplingConfig(steps=spec.sample_steps, guidance=spec.guidance, batch_size=max(8, len(spec.seeds)),
                         height=height, width=width)
    unet = pipe.unet
    unet.requires_grad_(False)
    reference = embed(pipe, reference_prompts)
    gen = torch.Generator().manual_seed(spec.seed)
    if skip and searches is None and targets:  # a chunk: the draws of the `skip` targets before it
        skip_draws(gen, skip, inits, spec, image_latent(pipe, targets[0]["image"]).shape,
                   reference.mean(0, keepdim=True).shape, pipe.scheduler.config.num_train_timesteps)
    T, I, S = len(targets), len(inits), len(spec.seeds)
    before, after = np.full((T, I, S), np.nan), np.full((T, I, S), np.nan)
    losses, seconds = np.full((T, I, spec.steps), np.nan), np.full((T, I), np.nan)
    examples = np.zeros((T, I, 2, *targets[0]["image"].shape), np.uint8) if targets else None
    batched = None
    if searches is None and per_call > 1 and targets:
        from memprune.attacks.recovery_batch import batched_searches

        batched = batched_searches(pipe, predrawn(pipe, targets, inits, spec, reference, gen), spec, per_call)
    embeddings = np.zeros((T, I, 2, *reference.shape[1:]), np.float32)
    for ti, target in enumerate(tqdm(targets, desc="recovery", disable=not progress)):
        z0 = image_latent(pipe, target["image"]) if searches is None and batched is None else None
        for ii, init in enumerate(inits):
            if searches is not None:
                start, y = (torch.from_numpy(searches["embedding"][ti, ii, k])[None].to(unet.device) for k in (0, 1))
                losses[ti, ii], seconds[ti, ii] = searches["loss"][ti, ii], searches["seconds"][ti, ii]
            elif batched is not None:
                start, y, losses[ti, ii], seconds[ti, ii] = batched[ti, ii]
            else:
                start = start_embedding(pipe, init, target["prompt"], target["unrelated"], reference, gen)
                t0 = time.perf_counter()
                with torch.enable_grad():
                    y, losses[ti, ii] = search(unet, pipe.scheduler, z0, start, spec, gen)
                seconds[ti, ii] = time.perf_counter() - t0
            embeddings[ti, ii] = torch.cat([start, y]).cpu().numpy()
            for k, emb in enumerate((start, y)):
                images, _ = variant.generate_embeds(pipe, emb.expand(S, -1, -1).to(unet.dtype), list(spec.seeds),
                                                    cfg, params)
                sim = metric.similarity(images, target["image"][None])[:, 0]
                (before if k == 0 else after)[ti, ii] = sim
                examples[ti, ii, k] = images[0]
            log.info("recovery %s [%s] %s: %s %.2f -> %.2f, loss %.4f -> %.4f, %.1fs", target["group"], init,
                     metric.name, target["prompt"][:40], np.median(before[ti, ii]), np.median(after[ti, ii]),
                     losses[ti, ii, 0], losses[ti, ii, -1], seconds[ti, ii])
    return {"before": before, "after": after, "loss": losses, "seconds": seconds, "examples": examples,
            "embedding": embeddings}


SEARCH_FIELDS = ("steps", "lr", "batch_size", "seed")  # what a search depends on besides the UNet and its targets


def read_searches(path: str | Path, targets: list[dict], inits: list[str], spec: RecoverySpec) -> dict:
    """The searches of the recovery file `path`, checked to be the ones this run would do: the same targets
    (prompt and group, in order), starts and search spec, made against the unedited UNet."""
    import xarray as xr

    with xr.open_dataset(path) as ds:
        theirs = json.loads(ds.attrs.get("spec", "{}"))
        problems = []
        if "embedding" not in ds:
            problems.append("it stores no embeddings (made by an older memprune: delete it to rerun)")
        if ds.attrs.get("checkpoint") or ds.attrs.get("variant_name") != "none":
            problems.append(f"it attacks {ds.attrs.get('variant')!r}, not the unedited UNet")
        if [str(p) for p in ds.prompt.values] != [t["prompt"] for t in targets] or \
                [str(g) for g in ds.group.values] != [t["group"] for t in targets]:
            problems.append("its targets differ")
        if [str(i) for i in ds.init.values] != list(inits):
            problems.append(f"its starts are {[str(i) for i in ds.init.values]}, not {list(inits)}")
        problems += [f"its {k} is {theirs.get(k)}, not {getattr(spec, k)}" for k in SEARCH_FIELDS
                     if theirs.get(k) != getattr(spec, k)]
        if problems:
            raise InputError(f"{path}: cannot reuse its searches: " + "; ".join(problems))
        return {k: ds[k].values for k in ("embedding", "loss", "seconds")}


def copied(sim: np.ndarray, threshold: float) -> np.ndarray:
    """(..., seed) -> (...) bool: similarity >= threshold in more than half the seeds (the evaluation's rule)."""
    return (sim >= threshold).sum(-1) * 2 > sim.shape[-1]


def recovery_dataset(variant_id: str, targets: list[dict], inits: list[str], spec: RecoverySpec, res: dict,
                     attrs: dict, metric=None, first: int = 0):
    """The recovery file; `ssim_original` / `ssim_recovered` hold the copy metric's similarity (attrs
    `copy_metric`: SSIM, or SSCD), the names kept from before SSCD could score them."""
    import xarray as xr

    from memprune.evaluate.copies import CopyMetric

    metric = metric if metric is not None else CopyMetric(spec.copy_threshold)
    what = "SSCD" if metric.sscd else "SSIM"
    ds = xr.Dataset(
        {
            "ssim_original": (("target", "init", "seed"), res["before"],
                              {"long_name": f"{what} to the target of generations from the start embedding "
                                            "(init=prompt: the original prompt)"}),
            "ssim_recovered": (("target", "init", "seed"), res["after"],
                               {"long_name": f"{what} to the target of generations from the recovered embedding"}),
            "loss": (("target", "init", "search_step"), res["loss"],
                     {"long_name": "the search's denoising loss per step"}),
            "seconds": (("target", "init"), res["seconds"], {"long_name": "seconds of the search (generation apart)"}),
            "copied_original": (("target", "init"), copied(res["before"], metric.threshold).astype(np.uint8),
                                {"long_name": f"most seeds from the start embedding reach {metric.label()}"}),
            "recovered": (("target", "init"), copied(res["after"], metric.threshold).astype(np.uint8),
                          {"long_name": f"most seeds from the recovered embedding reach {metric.label()}"}),
            "examples": (("target", "init", "which", "y", "x", "rgb"), res["examples"],
                         {"long_name": "the first seed's generation from the start and from the recovered embedding"}),
            "target_image": (("target", "y", "x", "rgb"), np.stack([t["image"] for t in targets])),
            "embedding": (("target", "init", "which", "token", "dim"), res["embedding"],
                          {"long_name": "the search's start (which=original) and found (which=recovered) "
                                        "text embedding"}),
        },
        coords={"target": first + np.arange(len(targets)),
                "prompt": ("target", np.array([t["prompt"] for t in targets], dtype=object)),
                "group": ("target", np.array([t["group"] for t in targets], dtype=object)),
                "init": list(inits), "seed": list(spec.seeds), "search_step": np.arange(spec.steps),
                "which": ["original", "recovered"]},
        attrs={"variant": variant_id, "spec": json.dumps(asdict(spec)), **metric.attrs(), **attrs},
    )
    return ds


def split_of(targets: list[dict], groups: dict, subset: dict | None) -> list[str]:
    """Per target, "subset" when its prompt is among those whose masks made the edit (`subset`: {group: prompt
    indices into groups[group]}), "heldout" otherwise; "all" for a model without an edit (`subset` None)."""
    if subset is None:
        return ["all"] * len(targets)
    own = {g: {groups[g][i] for i in idx} for g, idx in subset.items() if g in groups}
    return ["subset" if t["prompt"] in own.get(t["group"], ()) else "heldout" for t in targets]


def run_variant(model: str, variant: str, checkpoint: str | None, params: dict, data_dir: str | None, groups: dict,
                inits: list[str], spec: RecoverySpec, out: str | Path, variant_id: str, max_targets: int | None,
                new_photos: int = 0, device="auto", dtype="auto", progress=False, searches_from: str | None = None,
                images: dict | None = None, chosen: dict | None = None, subset: dict | None = None,
                sscd: str | None = None, height: int | None = None, width: int | None = None,
                chunk: tuple[int, int] | None = None, per_call: int = 1) -> None:
    """The recovery attack on one variant: targets are the first `max_targets` prompts of each group
    (`groups`: {group: prompt list}), or those of `chosen` ({group: prompt indices}, the plan's: an edit's own
    subset photos and held-out ones), with their training photos from the testbed dataset `data_dir`, or from
    `images` ({group: (root, prompt file)}, fetched; resized to the generations' `height` x `width`, None: the
    model's resolution), plus `new_photos` crops the model never saw (testbed only); written to `out` (netCDF),
    each target's `split` from `subset` (`split_of`).
    `searches_from`: the unedited model's recovery file, whose searches an inference-time variant reuses.
    `sscd`: the SSCD checkpoint that decides copies (None: SSIM), at `spec.copy_threshold`. `per_call`: searches
    per UNet call (`attacks.recovery_batch`)."""
    from memprune.evaluate.training_images import first_photos
    from memprune.formats.store import write_netcdf
    from memprune.attacks.extraction import resolve_variant
    from memprune.sampling import image_size
    from memprune.evaluate.copies import CopyMetric

    v, params = resolve_variant(variant, params)
    pipe = v.load(model, checkpoint, device, dtype, None)
    metric = CopyMetric(spec.copy_threshold, sscd, str(pipe.unet.device))
    h, w = image_size(pipe, height, width)
    picked = ({g: [ps[i] for i in chosen[g]] if g in chosen else ps[:max_targets] for g, ps in groups.items()}
              if chosen else groups)
    targets = first_photos(picked, data_dir, images, (w, h) if images else None, None if chosen else max_targets)
    all_prompts = [p for ps in groups.values() for p in ps]
    for target in targets:
        target["unrelated"] = all_prompts[(all_prompts.index(target["prompt"]) + len(all_prompts) // 2)
                                          % len(all_prompts)]
    if new_photos:
        from memprune.testbed.derived import new_photos as make_new

        new_images, captions = make_new(Path(data_dir), new_photos, seed=10_000 + spec.seed)
        for image, caption in zip(new_images, captions):
            targets.append({"prompt": caption, "group": "never_seen", "image": image, "unrelated": all_prompts[0]})
    if not targets:
        raise InputError("recovery: no targets (config key recovery.targets)")
    first = 0
    if chunk is not None:  # (index, size): this job's run of the targets; the draws before it are skipped
        first = min(chunk[0] * chunk[1], len(targets))
        targets = targets[first : first + chunk[1]]
        if not targets:
            from memprune.attacks.recovery_chunks import write_empty_chunk

            return write_empty_chunk(out, variant_id)
    searches = None
    if searches_from:
        if checkpoint or v.attacked_as != "none":
            raise InputError(f"--searches-from: the variant {v.name!r} is not attacked through the unedited UNet")
        searches = read_searches(searches_from, targets, inits, spec)
    res = attack_targets(pipe, v, params, targets, inits, spec, all_prompts[:64], progress=progress, searches=searches,
                         metric=metric, height=height, width=width, skip=first, per_call=per_call)
    ds = recovery_dataset(variant_id, targets, inits, spec, res,
                          {"model": str(model), "checkpoint": str(checkpoint or ""),
                           "variant_name": v.name, "variant_params": json.dumps(params),
                           "searches_from": str(searches_from or ""), "searches_per_call": per_call,
                           "subset": json.dumps(subset) if subset is not None else ""},
                          metric, first)
    ds["split"] = ("target", np.array(split_of(targets, groups, subset), dtype=object),
                   {"long_name": "subset: a photo of the prompts whose masks made the edit; heldout: another; "
                                 "all: no edit"})
    write_netcdf(ds, out)
