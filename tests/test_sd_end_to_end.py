"""Stable Diffusion's DAG end to end on CPU: SD1.5's and SD2's published architectures with random weights (rule
random_model; SD2 with its v-prediction DDIM scheduler), every stage of config/sd15_random.yaml and
config/sd2_random.yaml (capture, masks and IOU of every localizer, NeMo, the evaluation of every variant with a
stand-in SSCD, the extraction attack, detection, the recovery attack, adversarial fine-tuning, the leaderboard),
shrunk by an overlay written here to fit CI (`small_overlay`: 64 px, 2 steps, one seed, 1-2 prompts per set, the
fewest iterations; model names sd15_small / sd2_small, so a 512 px run of the shipped config is never overwritten),
submitted to the single-node SLURM of tests/test_slurm.py (its fixture) with the shipped CPU profile
workflow/profiles/slurm-cpu (one change: `sd_profile`). The 512 / 768 px configs themselves are what
benchmarks/gpu_smoke.sh runs on a GPU.

SSCD's real weights are out of reach here: tests/test_copies.py's TorchScript stand-in decides copies, so every stage
that decides one runs the SSCD path (and names it in its output). CLIP for prompt following is the testbed's
(resources/testbed_clip, the default evaluate.clip): offline.

Costs (this machine, 2 cores, 24 GB): docs/cluster.md. Run it alone with `python -m pytest --slow -m sd`; leave it
out with `-m "not sd"`."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_copies import _save_standin
from test_slurm import PROFILE, _processes_under, _scontrol
from test_slurm import slurm  # noqa: F401 (the single-node SLURM fixture, used by name below)

from memprune.plan import lay_out_clone

pytestmark = [pytest.mark.slow, pytest.mark.sd]

CONFIGS = {"sd15": "config/sd15_random.yaml", "sd2": "config/sd2_random.yaml"}
STEPS = 2  # PNDM runs 3 timesteps for 2 steps (its first one twice)


def small_overlay(arch: str, sscd: str) -> dict:
    """The overlay on CONFIGS[arch] that shrinks every stage to CI's budget (its model: results/<arch>_small)."""
    name = f"{arch}_small"
    images = f"results/{name}/stand_in_images"
    return {
        "model": {"name": name},
        "sampling": {"steps": STEPS, "height": 64, "width": 64},  # 8x8 latents: the UNet's 3 downsamplings reach 1x1
        "masks": {"tau": STEPS},
        "localizers": {"nemo": {"calibration": ["unmemorized"], "seeds": 2, "steps": STEPS, "theta_step": 1.0,
                                "max_refine": 8}},
        "mitigation": {"wen": {"max_iters": 2}},
        # every variant evaluated (Wen's, Ren's and Jain's mitigations on SD's shapes, the adversarial checkpoint),
        # Wanda's edit; the attacks on the unedited and the pruned model
        "evaluate": {"methods": ["wanda"], "seeds": [0], "max_memorized": 2, "max_nonmemorized": 2,
                     "ground_truth": f"{images}/memorized", "sscd": sscd},
        "attack": {"variants": ["none", "pruned"], "methods": ["wanda"], "n_samples": 2, "min_clique": 2,
                   "steps": STEPS},
        "detection": {"n_seeds": 1, "steps": STEPS},
        "recovery": {"images": {"memorized": f"{images}/memorized", "unmemorized": f"{images}/unmemorized"},
                     "variants": ["none", "pruned"], "steps": 1, "batch_size": 2, "seeds": [0], "sample_steps": STEPS},
        "adversarial": {"max_targets": 1, "targets_per_step": 1, "search_steps": 1, "search_batch": 2, "noises": 1,
                        "retain_batch": 1, "surrogate_steps": STEPS},
        "leaderboard": {"timing": {"prompts": 1, "rounds": 1}},
    }


def targets(name: str) -> list[str]:
    """Every stage's output; the leaderboard reads the evaluation, the attack's results and recovery."""
    return [f"results/{name}/{t}" for t in ("iou.nc", "eval.nc", "attack/table.csv", "detection.nc", "recovery.nc",
                                            "leaderboard.csv")]


def lay_out(wd: Path, arch: str, sscd: str) -> list[str]:
    """A clone in `wd` with the overlay beside it; the --configfile arguments (relative to `wd`)."""
    lay_out_clone(REPO, wd)
    (wd / "small.yaml").write_text(yaml.safe_dump(small_overlay(arch, sscd), sort_keys=False))
    return [CONFIGS[arch], "small.yaml"]


def merged_config(wd: Path, configfiles: list[str]) -> dict:
    from memprune.plan.leaderboard import overlay
    from memprune.plan.schema import validate_config

    cfg = {}
    for f in configfiles:
        cfg = overlay(cfg, yaml.safe_load((wd / f).read_text()))
    return validate_config(cfg)


def peak_job_rss(wd: Path, name: str) -> tuple[float, int]:
    """The largest max_rss (MB) of the run's benchmark records and how many jobs wrote one."""
    rss = []
    for tsv in (wd / "benchmarks").rglob("*.tsv"):
        if name in tsv.parts or "random_models" in tsv.parts:
            rows = tsv.read_text().splitlines()
            if len(rows) > 1:
                value = rows[-1].split("\t")[rows[0].split("\t").index("max_rss")]
                rss.append(float(value) if value not in ("-", "NA") else 0.0)
    return max(rss, default=0.0), len(rss)


def check_outputs(wd: Path, arch: str, configfiles: list[str]) -> None:
    """Every stage's output, the copy decisions by the SSCD stand-in, the leaderboard's rows, the scheduler."""
    import xarray as xr

    from memprune.plan.compare import Adversarial, Attack, Evaluation, Recovery
    from memprune.plan.config import Plan
    from memprune.plan.leaderboard import Leaderboard

    name = f"{arch}_small"
    results = wd / "results" / name
    for target in targets(name):
        assert (wd / target).is_file(), target
    plan = Plan(merged_config(wd, configfiles), wd)
    with xr.open_dataset(results / "eval.nc") as ds:
        assert (ds.attrs["copy_metric"], ds.attrs["copy_checkpoint"]) == ("sscd", "sscd_disc_large"), ds.attrs
    with xr.open_dataset(results / "recovery.nc") as ds:
        assert ds.attrs["copy_metric"] == "sscd", ds.attrs
    with xr.open_dataset(results / "iou.nc") as ds:
        assert (ds.sizes["localizer"], ds.sizes["layer"]) == (6, 16 + 7)  # ff.net.2, and NeMo's attn2.to_v
    checkpoint = wd / Adversarial(plan).output
    assert checkpoint.is_dir() and any(checkpoint.iterdir()), checkpoint
    evaluation, attack, recovery = Evaluation(plan), Attack(plan), Recovery(plan)
    board = Leaderboard(plan, evaluation, attack, recovery, Adversarial(plan))
    rows = (results / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 1 + len(board.models), rows

    # the architecture: SD2 predicts v (DDIM), SD1.5 epsilon (PNDM)
    scheduler = json.loads((wd / plan.model_dir / "scheduler" / "scheduler_config.json").read_text())
    want = {"sd15": ("PNDMScheduler", "epsilon"), "sd2": ("DDIMScheduler", "v_prediction")}[arch]
    assert (scheduler["_class_name"], scheduler.get("prediction_type", "epsilon")) == want


def sd_profile(directory: Path) -> Path:
    """workflow/profiles/slurm-cpu in `directory`, but adversarial fine-tuning asks the node's whole memory (`scontrol
    show node`), so SLURM runs nothing beside it: SD's full UNet under AdamW holds 13-14 GB (float32 weights,
    gradients, two moments), and another SD job 5-10 GB. The shipped profile's 4,000 MB is the testbed's, and SLURM
    here schedules by the requests alone (no cgroups). Every other job keeps the profile's one core: giving the jobs
    that run a network both cores, one at a time, was no faster (SD1.5: 936 s against 906 s; the small jobs queue
    behind them, and Snakemake notices each finished job later the longer its status checks find none)."""
    node = subprocess.run(["scontrol", "-o", "show", "node"], capture_output=True, text=True, timeout=10).stdout
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    profile["set-resources"]["adversarial_finetune"]["mem_mb"] = int(re.search(r"RealMemory=(\d+)", node).group(1))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def sscd_standin(tmp_path_factory) -> str:
    return _save_standin(tmp_path_factory.mktemp("sscd") / "sscd_disc_large.torchscript.pt")


def check_slurm_run(text: str) -> tuple[dict, list]:
    """Every job of the plan was submitted to SLURM and none failed: Snakemake's job stats, its log, and SLURM's records
    (of the jobs it still holds: MinJobAge). Returns the planned counts and the submitted (job id, rule)."""
    stats = text.split("Job stats:")[1].split("\n\n")[0]
    planned = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: .*?/slurm_logs/rule_(\w+?)/", text)
    rules = [r for _, r in submitted]
    assert {r: rules.count(r) for r in set(rules)} == {r: n for r, n in planned.items() if r != "total"}, stats
    assert "Error in rule" not in text and "failed, SLURM status is" not in text, text[-6000:]
    states = {jobid: _scontrol(jobid).get("JobState") for jobid, _ in submitted}
    assert {s for s in states.values() if s} <= {"COMPLETED"}, states
    return planned, submitted


@pytest.mark.usefixtures("slurm")
@pytest.mark.parametrize("arch", sorted(CONFIGS))  # sd15, then sd2: one at a time (memory)
def test_sd_dag_on_slurm(arch, sscd_standin, tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    name, wd = f"{arch}_small", tmp_path / "clone"
    configfiles = lay_out(wd, arch, sscd_standin)
    # targets before --configfile; --retries 0: a failing job fails the run at once (the profile retries twice)
    cmd = [sys.executable, "-m", "snakemake", *targets(name), "--configfile", *configfiles,
           "--profile", str(sd_profile(tmp_path / "profile")), "--slurm-status-command", "squeue",
           "--slurm-init-seconds-before-status-checks", "2", "--retries", "0"]
    log_path = tmp_path / "snakemake.log"
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=wd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            rc = proc.wait(timeout=1500)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.time() - t0
    text = log_path.read_text()
    left = _processes_under(wd)
    for pid in left:  # this run's job processes that outlived their SLURM job (none should)
        os.kill(pid, 9)
    assert rc == 0, f"snakemake on SLURM failed ({rc}):\n{text[-8000:]}"
    assert not left, f"processes of this run's SLURM jobs still running after it: {left}"
    planned, submitted = check_slurm_run(text)

    check_outputs(wd, arch, configfiles)
    peak, n_bench = peak_job_rss(wd, name)
    shutil.rmtree(wd / "results")  # passed: the random model and the edit checkpoints (about 5 GB) go
    print(f"\n{name} on SLURM: {len(submitted)} jobs ({planned['total']} planned), {wall:.0f} s wall; largest job "
          f"max_rss {peak:.0f} MB over {n_bench} benchmark records")
