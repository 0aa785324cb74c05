"""A mitigation meant to survive the recovery attack: adversarial fine-tuning ("Finding Dori", Kowalczuk et al.,
ICML 2026). The whole UNet is fine-tuned; every step

1. runs the recovery search (`recovery.search`, DoRI's Adam on the text embedding from the original prompt's)
   against the current UNet for a few memorized target photos, finding the embeddings y_adv that bring them back;
2. pulls the prediction under y_adv, and under the original prompt's embedding, toward a surrogate photo: the
   denoising loss of the surrogate's latent z_s conditioned on y_adv (and on the prompt);
3. keeps the model generating with the ordinary denoising loss on retained training data (every training photo
   but the targets), weighted by `retain_weight`.

The surrogate of a target is what a mitigated model generates for its prompt (DoRI: "what the model generates
for the prompt after mitigation"): here the registry variant `surrogate` (default Wen et al.'s inference-time
mitigation, which needs no checkpoint) on the unedited model, the first of `surrogate_seeds` whose copy
similarity to the target (the configured copy metric, `evaluate.copies`) stays below `copy_threshold`; where every
seed still copies, the unedited model's generation for an unrelated training caption (recorded per target as
`surrogate_source`). The result is a weights edit checkpoint (`edits.write_weights_edit`), loaded by the registry
variant `adversarial` like any other edit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from memprune.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class AdversarialSpec:
    rounds: int = 3  # passes over the targets (DoRI: about 5 epochs, the first helps most)
    targets_per_step: int = 5  # targets searched per step
    updates_per_step: int = 5  # UNet updates per step, on the step's found embeddings
    search_steps: int = 50  # the recovery search's budget (DoRI's attack: 50 steps, lr 0.1, batch 8)
    search_lr: float = 0.1
    search_batch: int = 8
    noises: int = 2  # noise draws per (target, embedding) in one update
    lr: float = 6e-5  # the finetune testbed's lr (0.1 x pre-training)
    weight_decay: float = 1e-4
    retain_batch: int = 32
    retain_weight: float = 1.0
    cond_dropout: float = 0.1  # of the retained batch's captions, as in training
    surrogate: str = "wen"  # a registry variant without a checkpoint: none, wen
    surrogate_seeds: int = 4
    surrogate_steps: int = 20
    guidance: float = 2.0
    copy_threshold: float = 0.4
    seed: int = 0

    def __post_init__(self):
        ints = ("rounds", "targets_per_step", "updates_per_step", "search_steps", "search_batch", "noises",
                "retain_batch", "surrogate_seeds", "surrogate_steps")
        bad = [k for k in ints if int(getattr(self, k)) < 1]
        if bad:
            raise InputError(f"adversarial: {', '.join(bad)} must be >= 1")
        if self.lr <= 0 or self.search_lr <= 0 or self.retain_weight < 0:
            raise InputError("adversarial: lr and search_lr must be > 0, retain_weight >= 0")


def surrogates(pipe, targets: list[dict], spec: AdversarialSpec, unrelated: list[str], metric=None,
               height: int | None = None, width: int | None = None):
    """(images (T, H, W, 3) uint8, source per target): the `spec.surrogate` variant's generation for each target's
    prompt that does not copy the target by `metric` (first such seed; None: SSIM at `spec.copy_threshold`),
    else the plain model's generation for an unrelated caption; at `height` x `width` pixels (None: the model's)."""
    from memprune.evaluate.copies import CopyMetric
    from memprune.sampling import SamplingConfig, generate
    from memprune.attacks.extraction import resolve_variant

    metric = metric if metric is not None else CopyMetric(spec.copy_threshold)
    variant, params = resolve_variant(spec.surrogate)
    if variant.needs_checkpoint:
        raise InputError(f"adversarial.surrogate: {spec.surrogate!r} needs a checkpoint; use a variant without one "
                         "(none, wen)")
    cfg = SamplingConfig(steps=spec.surrogate_steps, guidance=spec.guidance, batch_size=16, height=height, width=width)
    seeds = list(range(spec.surrogate_seeds))
    out, source = [], []
    for k, t in enumerate(targets):
        images, _ = variant.generate(pipe, [t["prompt"]] * len(seeds), seeds, cfg, params)
        ok = np.flatnonzero(~metric.copies(metric.similarity(images, t["image"][None])[:, 0]))
        if len(ok):
            out.append(images[ok[0]])
            source.append(f"{variant.name}:seed{seeds[ok[0]]}")
        else:
            out.append(generate(pipe, [unrelated[k % len(unrelated)]], [0], cfg)[0])
            source.append("unrelated")
    return np.stack(out), source


def adversarial_finetune(pipe, targets: list[dict], retained_latents, retained_states, null_state,
                         spec: AdversarialSpec,
                         unrelated: list[str], progress: bool = False, metric=None, height: int | None = None,
                         width: int | None = None) -> dict:
    """Fine-tune `pipe.unet` in place (see the module's docstring). `targets`: {prompt, image (H, W, 3) uint8};
    retained_*: (N, C, h, w) latents and (N, L, D) text states of the data to keep; `metric`: the copy metric
    that picks the surrogates (None: SSIM at `spec.copy_threshold`). Returns the run's record."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    from tqdm.auto import tqdm

    from memprune.sampling import text_embeddings
    from memprune.attacks.recovery import RecoverySpec, denoising_loss, image_latent, search

    t0 = time.perf_counter()
    unet, sched = pipe.unet, pipe.scheduler
    # config `sampling`'s size
    surrogate_images, source = surrogates(pipe, targets, spec, unrelated, metric, height, width)
    surrogate_seconds = time.perf_counter() - t0
    z_target = torch.cat([image_latent(pipe, t["image"]) for t in targets])
    z_surr = torch.cat([image_latent(pipe, im) for im in surrogate_images])
    y_prompt = text_embeddings(pipe, [t["prompt"] for t in targets]).float()
    rspec = RecoverySpec(steps=spec.search_steps, lr=spec.search_lr, batch_size=spec.search_batch, seed=spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)

    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if unet.device.type == "cpu":
        unet.set_attn_processor(AttnProcessor())  # plain attention: faster on CPU for the testbed's tiny heads
    T = len(targets)
    order = np.concatenate([np.random.default_rng(spec.seed + r).permutation(T) for r in range(spec.rounds)])
    batches = [order[i : i + spec.targets_per_step] for i in range(0, len(order), spec.targets_per_step)]
    record = {"search_loss_first": [], "search_loss_last": [], "surrogate_loss": [], "retain_loss": []}
    search_seconds = 0.0
    for idx in tqdm(batches, desc="adversarial", disable=not progress):
        unet.eval().requires_grad_(False)
        s0 = time.perf_counter()
        found = []
        for k in idx:
            with torch.enable_grad():
                y, losses = search(unet, sched, z_target[k : k + 1], y_prompt[k : k + 1], rspec, gen)
            found.append(y)
            record["search_loss_first"].append(round(float(losses[0]), 5))
            record["search_loss_last"].append(round(float(losses[-1]), 5))
        search_seconds += time.perf_counter() - s0
        y_adv = torch.cat(found)
        cond = torch.cat([y_adv, y_prompt[idx]]).repeat(spec.noises, 1, 1)
        z_s = z_surr[idx].repeat(2 * spec.noises, 1, 1, 1)
        unet.train().requires_grad_(True)
        for _ in range(spec.updates_per_step):
            loss_s = denoising_loss(unet, sched, z_s, cond, gen)
            r = torch.randint(0, len(retained_latents), (spec.retain_batch,), generator=gen)
            states = retained_states[r].clone()
            states[torch.rand(spec.retain_batch, generator=gen) < spec.cond_dropout] = null_state[0]
            loss_r = denoising_loss(unet, sched, retained_latents[r], states, gen)
            loss = loss_s + spec.retain_weight * loss_r
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            record["surrogate_loss"].append(round(loss_s.item(), 5))
            record["retain_loss"].append(round(loss_r.item(), 5))
        log.info("adversarial step: search loss %.4f -> %.4f, surrogate loss %.4f, retained loss %.4f",
                 np.mean(record["search_loss_first"][-len(idx):]), np.mean(record["search_loss_last"][-len(idx):]),
                 record["surrogate_loss"][-1], record["retain_loss"][-1])
    unet.eval().requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0())
    record.update(spec=asdict(spec), targets=[t["prompt"] for t in targets], surrogate_source=source,
                  steps=len(batches), updates=len(batches) * spec.updates_per_step, searches=len(order),
                  seconds=round(time.perf_counter() - t0, 1), surrogate_seconds=round(surrogate_seconds, 1),
                  search_seconds=round(search_seconds, 1), retained=int(len(retained_latents)))
    return record


def testbed_inputs(pipe, data_dir: Path, prompts: list[str], max_targets: int | None):
    """The targets (the prompts' first training photos), and the retained data: every training row of the
    dataset whose caption is not a target's, once each, as latents and frozen text states."""
    import torch

    from memprune.evaluate.training_images import TrainingImages
    from memprune.testbed.dataset import images_to_tensor, load_images, read_manifest
    from memprune.testbed.tuning import embed, encode

    truth = TrainingImages(data=str(data_dir))
    targets = []
    for prompt in prompts[:max_targets]:
        image = truth.first_image(prompt)
        if image is None:
            raise InputError(f"{data_dir}: no training photo for the adversarial target {prompt[:60]!r}")
        targets.append({"prompt": prompt, "image": image})
    if not targets:
        raise InputError("adversarial: no targets (config key adversarial.targets)")
    names = {t["prompt"] for t in targets}
    rows = [r for r in read_manifest(Path(data_dir) / "manifest.jsonl") if r.get("split", "train") == "train"
            and r["caption"] not in names]
    if not rows:
        raise InputError(f"{data_dir}: no retained training rows besides the targets")
    with torch.no_grad():
        latents = encode(pipe.vae, images_to_tensor(load_images(Path(data_dir), rows)))
        states = embed(pipe, [r["caption"] for r in rows])
    unrelated = [r["caption"] for r in rows if int(r.get("duplication", 1)) == 1] or [r["caption"] for r in rows]
    rng = np.random.default_rng(0)
    return targets, latents, states, embed(pipe, [""]), [unrelated[i] for i in rng.permutation(len(unrelated))[:64]]


def fetched_inputs(pipe, images: dict, target_sets: list[str], max_targets: int | None, height: int | None = None,
                   width: int | None = None):
    """Stable Diffusion: the targets (the first `max_targets` fetched photos of each target set) and the
    retained data: every other fetched image of `images` ({set: (root, prompt file)}), at `height` x `width` (None:
    the model's resolution), as latents and frozen text states (on the CPU; the loss moves each batch)."""
    import torch

    from memprune.attacks.recovery import image_latent
    from memprune.evaluate.training_images import first_photos
    from memprune.formats.prompts import read_prompts
    from memprune.sampling import image_size, text_embeddings

    h, w = image_size(pipe, height, width)
    groups = {s: read_prompts(Path(f)) for s, (_, f) in images.items()}
    targets = first_photos({s: groups[s] for s in target_sets}, images=images, size=(w, h), max_per_group=max_targets)
    names = {t["prompt"] for t in targets}
    rows = [r for r in first_photos(groups, images=images, size=(w, h)) if r["prompt"] not in names]
    if not rows:
        raise InputError("adversarial: no retained images besides the targets (config key recovery.images)")
    latents = torch.cat([image_latent(pipe, r["image"]).cpu() for r in rows])
    states = text_embeddings(pipe, [r["prompt"] for r in rows]).float().cpu()
    unrelated = [r["prompt"] for r in rows][:64]
    return targets, latents, states, text_embeddings(pipe, [""]).float().cpu(), unrelated


def run(model: str, data_dir: str | None, prompts: list[str], spec: AdversarialSpec, out: str | Path,
        max_targets: int | None = None, threads: int = 0, progress: bool = False, images: dict | None = None,
        target_sets: list[str] | None = None, device: str = "cpu", sscd: str | None = None, height: int | None = None,
        width: int | None = None) -> dict:
    """Adversarially fine-tune `model` against the recovery attack and write the weights edit checkpoint to
    `out`: a testbed on `prompts`' photos in its dataset `data_dir`, or (Stable Diffusion) on the fetched photos
    of `target_sets` in `images` ({set: (root, prompt file)}). The UNet trains in float32 on `device`. `sscd`: the
    SSCD checkpoint that decides which surrogate generations copy (None: SSIM), at `spec.copy_threshold`.
    `height` x `width`: the surrogates' size and the fetched photos' (None: the model's resolution)."""
    import torch

    from memprune.evaluate.copies import CopyMetric
    from memprune.formats.edits import write_weights_edit
    from memprune.models import load_pipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = load_pipeline(model, device, "float32")
    if images:
        targets, latents, states, null_state, unrelated = fetched_inputs(pipe, images, target_sets or [], max_targets,
                                                                         height, width)
    else:
        targets, latents, states, null_state, unrelated = testbed_inputs(pipe, Path(data_dir), prompts, max_targets)
    log.info("adversarial fine-tuning on %d targets, %d retained rows", len(targets), len(latents))
    metric = CopyMetric(spec.copy_threshold, sscd, str(pipe.unet.device))  # `device` may be "auto"
    record = adversarial_finetune(pipe, targets, latents, states, null_state, spec, unrelated, progress=progress,
                                  metric=metric, height=height, width=width)
    record.update(metric.attrs())
    write_weights_edit(model, pipe.unet, out, "adversarial", asdict(spec), {"adversarial": record})
    log.info("adversarial fine-tune: %d searches, %d updates in %.0fs -> %s", record["searches"], record["updates"],
             record["seconds"], out)
    return record


def add_adversarial_arguments(sub) -> None:
    """Register `adversarial-finetune`."""
    from memprune.cliargs import add_size_args
    from memprune.formats.prompts import json_object, read_prompts

    def main(args):
        spec = AdversarialSpec(**json_object(args.spec))
        prompts = [p for f in args.prompts_file for p in read_prompts(Path(f))[: args.max_targets]]
        images = {s: tuple(v) for s, v in json_object(args.images_json).items()} if args.images_json else None
        if bool(args.data) == bool(images):
            raise InputError("adversarial-finetune: give the testbed dataset (--data) or the fetched images "
                             "(--images-json)")
        target_sets = [s for s, (_, f) in (images or {}).items() if f in args.prompts_file]
        run(args.model, args.data, prompts, spec, args.out, args.max_targets if images else None, args.threads,
            progress=not args.no_progress, images=images, target_sets=target_sets, device=args.device, sscd=args.sscd,
            height=args.height, width=args.width)

    p = sub.add_parser("adversarial-finetune",
                       help="adversarial fine-tuning against the recovery attack (Finding Dori)")
    p.add_argument("--model", required=True, help="a testbed model directory, or a Stable Diffusion pipeline")
    p.add_argument("--data", default=None, help="a testbed's dataset (targets' photos and the retained data)")
    p.add_argument("--images-json", default=None,
                   help="or {set: [root, prompt file]}: fetched images (<root>/<index>/*.png); the sets whose files "
                        "are --prompts-file are the targets, every other image is retained")
    p.add_argument("--device", default="cpu", help="where the UNet trains (float32)")
    p.add_argument("--prompts-file", required=True, nargs="+",
                   help="memorized prompt files whose photos are the targets")
    p.add_argument("--max-targets", type=int, default=None, help="the first N prompts of each file")
    p.add_argument("--spec", default="{}", help="JSON of AdversarialSpec fields")
    p.add_argument("--threads", type=int, default=0)
    add_size_args(p)
    p.add_argument("--sscd", default=None, help="SSCD TorchScript checkpoint that decides copies (default: SSIM)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="the edit checkpoint directory")
    p.set_defaults(func=main)
