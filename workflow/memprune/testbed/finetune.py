"""The `finetune` testbed: the paper's section 5.4 protocol applied to the shipped testbed.

The paper fine-tunes Stable Diffusion 1.5 on Imagenette for 15,000 iterations at batch 4, with 100 images
duplicated 50 times, and finds them memorized (Table 1). Here the shipped testbed plays the pre-trained model:
its whole UNet is fine-tuned (text encoder and VAE frozen, as SD fine-tuning usually does) on its own training
data plus K new photos repeated D times (`derived.extend_dataset`, group "finetuned"), for the paper's number
of passes over the data: 15,000 x 4 samples over Imagenette's 9,469 training images plus 100 x 49 extra
copies (14,369 samples) is 4.18 epochs. Nothing here is tuned to make anything memorize.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from memprune.errors import InputError

log = logging.getLogger(__name__)

PAPER_EPOCHS = 15000 * 4 / (9469 + 100 * 49)  # 4.18: the paper's fine-tune, in passes over its data


@dataclass
class FinetuneSpec:
    epochs: float = round(PAPER_EPOCHS, 2)  # passes over the extended training set (duplicates expanded)
    batch_size: int = 64  # the testbed's pre-training batch
    lr: float = 6e-5  # 0.1 x the testbed's pre-training lr (SD: pre-trained at 1e-4, fine-tuned at 1e-5 usually)
    warmup: int = 50  # linear warmup, then constant
    weight_decay: float = 1e-4  # as pre-training
    cond_dropout: float = 0.1
    seed: int = 0  # batches, caption dropout, noise, timesteps
    threads: int = 0  # 0: leave torch's default

    def steps(self, samples: int) -> int:
        return max(1, int(math.ceil(self.epochs * samples / self.batch_size)))


def finetune(model_dir: Path, data_dir: Path, out_dir: Path, spec: FinetuneSpec, progress: bool = True,
             snapshots: dict[float, Path] | None = None) -> dict:
    """Fine-tune the whole UNet of the testbed in `model_dir` on every training sample of the extended dataset
    `data_dir` (its own data and the "finetuned" photos, duplicates expanded, drawn uniformly), epsilon loss
    with the training scheduler; write the derived model to `out_dir` atomically. Returns its record.

    `snapshots` {epochs: directory}, each below `spec.epochs`: the model as a run of that many epochs would
    write it, saved on the way. Nothing in a step depends on the run's length (constant rate after warmup,
    one seeded stream of batches), so a snapshot's UNet and record are those of the shorter run, but for
    `seconds` (tests/test_planted.py)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    from tqdm.auto import tqdm

    from memprune.models import load_pipeline
    from memprune.testbed.dataset import dataset_digest
    from memprune.testbed.derived import check_extends, save_derived
    from memprune.testbed.model import make_train_scheduler
    from memprune.testbed.tuning import noise_loss, training_tensors

    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.epochs <= 0 or spec.batch_size < 1:
        raise InputError(f"finetune: epochs ({spec.epochs}) must be > 0 and batch_size ({spec.batch_size}) >= 1")
    data_spec = check_extends(model_dir, data_dir, "finetuned")
    t0 = time.time()
    pipe = load_pipeline(model_dir, "cpu", "float32")
    unet = pipe.unet
    own_latents, own_states, new_latents, new_states, prompts, _, null_state = training_tensors(
        pipe, data_dir, "finetuned")
    repeats = int(data_spec["added"]["duplication"])
    latents = torch.cat([own_latents, new_latents.repeat_interleave(repeats, 0)])
    states = torch.cat([own_states, new_states.repeat_interleave(repeats, 0)])
    steps = spec.steps(len(latents))
    snap_at = {}
    for epochs, where in (snapshots or {}).items():
        shorter = replace(spec, epochs=float(epochs))
        if not 0 < shorter.steps(len(latents)) < steps:
            raise InputError(f"finetune: snapshot at {epochs} epochs must lie between 0 and the run's {spec.epochs}")
        snap_at[shorter.steps(len(latents))] = (shorter, Path(where))
    log.info("finetune: %d samples (%d new photos x %d), %d steps of %d (%.2f epochs)", len(latents), len(prompts),
             repeats, steps, spec.batch_size, spec.epochs)

    digest = dataset_digest(data_dir)

    def record_of(run: FinetuneSpec, n_steps: int, run_losses: list) -> dict:
        return {"derived": "finetune", "dataset_sha256": digest, "spec": asdict(run), "samples": len(latents),
                "steps": n_steps, "added": data_spec["added"], "prompts": prompts, "base_model": str(model_dir),
                "loss": run_losses, "seconds": round(time.time() - t0, 1)}

    sched = make_train_scheduler()
    gen = torch.Generator().manual_seed(spec.seed)
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    unet.set_attn_processor(AttnProcessor())  # plain bmm attention: faster on CPU with tiny heads (train.py)
    unet.train()
    losses, window = [], []
    for step in tqdm(range(steps), desc="finetune", disable=not progress, mininterval=5):
        idx = torch.randint(0, len(latents), (spec.batch_size,), generator=gen)
        z0, cond = latents[idx], states[idx].clone()
        cond[torch.rand(spec.batch_size, generator=gen) < spec.cond_dropout] = null_state[0]
        for g in opt.param_groups:
            g["lr"] = spec.lr * min(1.0, (step + 1) / spec.warmup)
        loss = noise_loss(unet, z0, cond, sched.alphas_cumprod, sched.config.num_train_timesteps, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(loss.item())
        if len(window) == 50 or step == steps - 1:
            losses.append(round(float(np.mean(window)), 5))
            log.info("finetune step %d loss %.4f (mean of the last %d steps)", step + 1, losses[-1], len(window))
            window = []
        if step + 1 in snap_at:
            shorter, where = snap_at[step + 1]
            so_far = losses + ([round(float(np.mean(window)), 5)] if window else [])
            save_derived(where, unet, model_dir, record_of(shorter, step + 1, so_far))
            log.info("snapshot after %d steps (%.2f epochs): %s", step + 1, shorter.epochs, where)
    unet.eval().requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0())  # diffusers' default, as from_pretrained sets it
    record = record_of(spec, steps, losses)
    save_derived(out_dir, unet, model_dir, record)
    log.info("fine-tuned %d steps in %.0fs: %s", steps, record["seconds"], out_dir)
    return record
