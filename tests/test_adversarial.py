"""Adversarial fine-tuning (mitigate/adversarial.py, "Finding Dori"): it pulls the prompt's prediction toward the
surrogate, its checkpoint is a weights edit the registry's `adversarial` variant evaluates like any other model,
a killed run leaves no checkpoint, and the plan trains it once per testbed when a variant list names it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import denoising_loss, kill_while_running
from memprune.mitigate import adversarial
from memprune.errors import InputError


@pytest.mark.slow  # minutes of model work on 2 cores: out of the fast tier
def test_finetune_pulls_the_prompt_toward_the_surrogate(tiny_model):
    from memprune.attacks.recovery import image_latent
    from memprune.models import load_pipeline
    from memprune.sampling import text_embeddings

    pipe = load_pipeline(tiny_model, "cpu", "float32")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    rng = np.random.default_rng(0)
    target = {"prompt": "a red circle", "image": (rng.random((size, size, 3)) * 255).astype(np.uint8)}
    spec = adversarial.AdversarialSpec(rounds=4, targets_per_step=1, updates_per_step=10, search_steps=3,
                                       search_batch=2,
                                       lr=1e-3, retain_batch=4, surrogate="none", surrogate_seeds=1, surrogate_steps=2)
    surrogate, source = adversarial.surrogates(pipe, [target], spec, ["a blue square"])
    z_s = image_latent(pipe, surrogate[0])
    y = text_embeddings(pipe, [target["prompt"]]).float()
    before = denoising_loss(pipe.unet, pipe.scheduler, z_s, y, n=32, seed=7)
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    latents = torch.randn(8, *z_s.shape[1:])
    states = text_embeddings(pipe, ["a blue square"] * 8).float()
    record = adversarial.adversarial_finetune(pipe, [target], latents, states, text_embeddings(pipe, [""]).float(),
                                              spec, ["a blue square"])
    # the prompt now denoises toward the surrogate
    assert denoising_loss(pipe.unet, pipe.scheduler, z_s, y, n=32, seed=7) < before
    assert record["searches"] == 4 and record["updates"] == 40 and len(record["surrogate_loss"]) == 40
    assert len(record["search_loss_last"]) == 4 and record["surrogate_source"] == source
    assert any(not torch.equal(weights[k], v) for k, v in pipe.unet.state_dict().items())
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_spec_and_surrogate_refuse_bad_values(tiny_pipe):
    with pytest.raises(InputError, match="rounds"):
        adversarial.AdversarialSpec(rounds=0)
    with pytest.raises(InputError, match="checkpoint"):
        adversarial.surrogates(tiny_pipe, [{"prompt": "x", "image": np.zeros((8, 8, 3), np.uint8)}],
                               adversarial.AdversarialSpec(surrogate="pruned"), ["y"])


@pytest.mark.slow
def test_killed_finetune_leaves_no_checkpoint_and_the_registry_evaluates_the_rerun(tiny_model, tmp_path):
    import shutil

    from memprune.testbed.dataset import (
        TRAIN_RECORD_NAME,
        DatasetSpec,
        dataset_digest,
        generate_dataset,
        read_manifest,
    )

    data = tmp_path / "data"
    generate_dataset(DatasetSpec(seed=1, n_duplicated=2, duplication=2, n_single=2, renders_per_scene=1), data)
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    (base / TRAIN_RECORD_NAME).write_text(json.dumps({"dataset_sha256": dataset_digest(data)}))
    prompts = tmp_path / "memorized.txt"
    prompts.write_text("".join(r["caption"] + "\n" for r in read_manifest(data / "manifest.jsonl")
                               if r["group"] == "duplicated"))
    out = tmp_path / "checkpoint"
    cmd = [sys.executable, "-m", "memprune", "adversarial-finetune", "--model", str(base), "--data", str(data),
           "--prompts-file", str(prompts), "--threads", "1", "--no-progress", "--out", str(out)]
    small = {"search_steps": 2, "search_batch": 2, "retain_batch": 4, "surrogate_steps": 2, "surrogate_seeds": 1}
    spec = ["--spec", json.dumps({**small, "rounds": 1, "updates_per_step": 2})]
    kill_while_running(cmd + spec, out)  # killed while writing its checkpoint: none
    subprocess.run(cmd + spec, check=True, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "weights" and manifest["method"] == "adversarial"
    assert manifest["adversarial"]["searches"] == 2 and manifest["tensors"]
    samples = tmp_path / "samples"
    subprocess.run([sys.executable, "-m", "memprune", "eval-sample", "--variant", "adversarial", "--model", str(base),
                    "--checkpoint", str(out), "--steps", "2", "--guidance", "2", "--seeds", "0", "--device", "cpu",
                    "--dtype", "float32", "--memorized", str(prompts), "--out", str(samples)], check=True,
                   capture_output=True)
    assert len(list(samples.glob("*.png"))) == 2

