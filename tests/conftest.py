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


def temporaries_of(target: Path) -> list[Path]:
    """The temporary siblings memprune.formats.store writes `target` into before renaming it (`.<name>.tmp-*`)."""
    return sorted(Path(target).parent.glob(f".{Path(target).name}.tmp-*"))


def temporaries_under(root: Path) -> list[Path]:
    """Every temporary output (`.<name>.tmp-*`) under `root`."""
    return sorted(Path(root).rglob(".*.tmp-*")) if Path(root).exists() else []


def kill_at_write(cmd: list[str], temporaries, not_before: float = 0.0, timeout: float = 900.0,
                  group: bool = False) -> list[Path]:
    """Start `cmd` and SIGKILL it (its whole process group when `group`: Snakemake and its jobs) the moment
    `temporaries()` lists a temporary output on disk, `not_before` seconds after the start at the earliest.

    Asserts that it was alive when killed: it must die of the signal, not exit on its own (an exit before any
    temporary appeared fails with its stderr). Returns the temporaries still on disk after the kill: a killed
    process cannot remove them, so they were on disk at the kill (empty only when the write it was in finished
    between the look and the kill)."""
    import signal
    import tempfile
    import time

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=group)
        start = time.monotonic()
        try:
            while True:
                if proc.poll() is not None:
                    err.seek(0)
                    raise AssertionError(f"{' '.join(cmd[:4])} ... exited ({proc.returncode}) before it was killed "
                                         f"while writing:\n{err.read().decode(errors='replace')[-3000:]}")
                elapsed = time.monotonic() - start
                assert elapsed < timeout, f"no temporary output within {timeout:.0f} s"
                if elapsed >= not_before and temporaries():
                    break
                time.sleep(0.002)
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                (os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill())
                proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"it exited ({proc.returncode}) before the SIGKILL"
    return temporaries()


def kill_while_running(cmd: list[str], out: Path, timeout: float = 900.0) -> list[Path]:
    """Start `cmd` (a memprune command writing `out`) and SIGKILL it while it writes `out`: asserts that it was
    alive at the kill with the temporary of `out` on disk, and that `out` itself was never put in place."""
    left = kill_at_write(cmd, lambda: temporaries_of(out), timeout=timeout)
    assert left, f"the kill came after {out}'s temporary was renamed"
    assert not Path(out).exists()
    return left


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the slow tier (tests marked slow: workflow runs, SLURM, minutes of model work)")


def pytest_collection_modifyitems(config, items):
    """The everyday command runs the fast tier: slow tests are deselected unless `--slow` (or a `-m` naming slow)."""
    if config.getoption("--slow") or "slow" in (config.option.markexpr or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


# The fast tier starts no Python, Snakemake or SLURM process: a test that does is marked slow.
_TIER = {"slow": True, "test": None}
_STARTS_A_RUN = ("python", "snakemake", "memprune", "srun", "sbatch")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures (a session fixture that runs the workflow counts for the test needing it)."""
    _TIER.update(slow=item.get_closest_marker("slow") is not None, test=item.nodeid)


def pytest_configure(config):
    original = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        program = os.path.basename(os.fsdecode(argv[0])).split()[0] if argv else ""
        if not _TIER["slow"] and (program.startswith(_STARTS_A_RUN) or argv[0] == sys.executable):
            raise RuntimeError(f"{_TIER['test']} starts {program!r} in a subprocess: mark it @pytest.mark.slow "
                               "(the fast tier runs none)")
        original(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = guarded


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


# The time of each tier, printed at the end of a run (what CI takes in each: the SD end-to-end runs, the rest of the
# slow tier, the fast tier), from each test's setup, call and teardown (a session fixture counts where it starts).
_TIMES: dict[str, float] = {}


def _tier_of(item) -> str:
    if item.get_closest_marker("sd") is not None:
        return "Stable Diffusion end to end (marker sd)"
    return "slow tier, the rest" if item.get_closest_marker("slow") is not None else "fast tier"


def pytest_runtest_logreport(report):
    _TIMES[report.nodeid] = _TIMES.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    items = {item.nodeid: item for item in getattr(config, "_tier_items", [])}
    totals: dict[str, list] = {}
    for nodeid, seconds in _TIMES.items():
        if nodeid in items:
            tier = totals.setdefault(_tier_of(items[nodeid]), [0, 0.0])
            tier[0] += 1
            tier[1] += seconds
    if totals:
        terminalreporter.write_sep("-", "time per tier")
        for tier, (n, seconds) in sorted(totals.items()):
            terminalreporter.write_line(f"{tier}: {n} tests, {seconds:.0f} s")


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    session.config._tier_items = list(session.items)
