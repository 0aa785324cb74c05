import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BPE = REPO / "resources" / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_spec():
    from memprune.testbed.model import ModelSpec

    return ModelSpec(unet_channels=(16, 32), text_hidden=32, vae_channels=(16, 16, 16), max_length=20)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random testbed-structured StableDiffusionPipeline saved with save_pretrained (epsilon)."""
    from memprune.testbed.model import save_untrained_pipeline

    return save_untrained_pipeline(tmp_path_factory.mktemp("models") / "tiny", BPE, tiny_spec())


WORKFLOW_SETS = {"mem": (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:10],
                 "ctrl": (REPO / "resources/prompts/testbed/generalization.txt").read_text().splitlines()[:8]}
WORKFLOW_COLLECTIONS = {
    "m5": {"set": "mem", "n_subsets": 3, "size": 5, "seed": 0},
    "c4": {"set": "ctrl", "n_subsets": 2, "size": 4, "seed": 0, "control": True},
}


@pytest.fixture(scope="session")
def workflow_run(tiny_model, tmp_path_factory):
    """One DAG run to results/iou.nc on the tiny model (2 sets, 2 collections), shared by the workflow tests and
    the fault tests (a killed run from scratch must end byte-identical to it)."""
    wd = tmp_path_factory.mktemp("wf")
    write_config(wd, tiny_model, WORKFLOW_SETS, WORKFLOW_COLLECTIONS)
    snakemake(wd, "results/iou.nc")
    return wd


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model):
    from memprune.models import load_pipeline

    return load_pipeline(tiny_model, "cpu", "float32")


def write_config(workdir: Path, model: Path, prompts: dict[str, list[str]], collections: dict, **overrides) -> Path:
    """A small workflow config in `workdir` (prompt sets written as .txt files there)."""
    import yaml

    sets = {}
    for name, lines in prompts.items():
        path = workdir / f"{name}.txt"
        path.write_text("".join(p + "\n" for p in lines))
        sets[name] = str(path)
    cfg = {
        "model": {"name": "tiny", "path": str(model), "device": "cpu", "dtype": "float32"},
        "sampling": {"steps": 6, "guidance": 3.0, "batch_size": 8, "seed": 0},
        "prompt_sets": sets,
        "collections": collections,
        "activations": {"chunk_size": 4, "variant": "paper"},
        "masks": {"sparsity": 0.05, "tau": 3},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def kill_while_running(cmd: list[str], seconds: float = 8.0) -> None:
    """Start `cmd`, check it is still running `seconds` later (training, searching), then SIGKILL it."""
    import signal
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    assert proc.poll() is None  # still running
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def denoising_loss(unet, scheduler, z0, y, n: int = 16, seed: int = 123) -> float:
    """The epsilon loss of latent `z0` under text states `y` on n fixed (noise, timestep) draws."""
    import torch

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *z0.shape[1:]), generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g)
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        pred = unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=y.expand(n, -1, -1)).sample
    return float(((pred - noise) ** 2).mean())
