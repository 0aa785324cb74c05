"""`memprune profiles`: workflow/profiles/slurm-cpu/config.yaml written from workflow/profiles/slurm/config.yaml.

The GPU profile is the one description of the SLURM runs (settings, rules, run times, the GPU model named once);
the CPU profile is that file with the few changes a CPU-only cluster needs, made here (`cpu_profile`). Snakemake 9
has no include or extend between profiles: it reads one YAML file per `--profile` (and `--workflow-profile`), and of
several a later one replaces an earlier one's top-level keys whole, so a second profile's `set-resources` would drop
the first's. So the CPU profile is written, a plain file that the users' command reads as it is, and
tests/test_profiles.py fails while the committed file differs from what this writes."""

from __future__ import annotations

from pathlib import Path

import yaml

from memprune.errors import InputError

GPU_PROFILE, CPU_PROFILE = "slurm", "slurm-cpu"
# What a job gets on a CPU-only node: one cpu (giving the jobs that run a network both cores of a 2-core node was
# no faster, tests/test_sd_end_to_end.py), but the rules in THREADS, which get that many as set-threads and
# cpus_per_task; mem_mb the GPU profile's divided by MEM_DIVISOR, at least MEM_MIN_MB.
NODE_CPUS = 2
THREADS = {"analysis": 2}  # its layers in parallel
MEM_DIVISOR, MEM_MIN_MB = 8, 2000
# Resources the SLURM executor plugin turns into GPU requests: gone from every rule, and gpu itself set to 0 (it
# overrides a rule's gpu=1; leaving gpu_model would submit --gpus=<model>:0).
GPU_KEYS = ("gpu_model", "gres", "tasks_per_gpu", "cpus_per_gpu")


def cpu_resources(gpu: dict, default: dict, threads: int, is_rule: bool) -> dict:
    """One rule's (or, `is_rule` false, the default's) resources on the CPU cluster from its GPU profile entry: every
    resource kept but the GPU requests, mem_mb scaled, one cpu or `threads`."""
    mem = gpu.get("mem_mb", default.get("mem_mb"))
    out = {"gpu": 0} if is_rule else {}
    out |= {"mem_mb": max(MEM_MIN_MB, mem // MEM_DIVISOR)} if mem else {}
    out |= {"runtime": gpu["runtime"]} if "runtime" in gpu else {}
    out["cpus_per_task"] = threads
    return out | {k: v for k, v in gpu.items() if k not in out and k != "gpu" and k not in GPU_KEYS}


def cpu_profile(gpu: dict) -> dict:
    """The CPU profile from the GPU profile (as YAML loads it): the same settings, rules and run times, no GPU
    requests, sized for a NODE_CPUS-core node."""
    threads = {rule: min(n, NODE_CPUS) for rule, n in gpu.get("set-threads", {}).items()} | THREADS
    default = gpu.get("default-resources", {})
    out = {}
    for key, value in gpu.items():
        if key == "default-resources":
            value = cpu_resources(value, {}, 1, is_rule=False)
        elif key == "set-resources":
            value = {rule: cpu_resources(res, default, threads.get(rule, 1), is_rule=True)
                     for rule, res in value.items()}
        elif key == "set-threads":
            continue
        out[key] = value
    return out | ({"set-threads": threads} if threads else {})


def header() -> str:
    """The CPU profile's comments: where it comes from, what differs, how to run it."""
    threads = ", ".join(f"{rule} {n}" for rule, n in THREADS.items())
    return f"""\
# Written by `memprune profiles` from workflow/profiles/slurm/config.yaml: do not edit it here; edit that file (or
# the CPU rules in workflow/memprune/profiles.py) and rerun `memprune profiles` (tests/test_profiles.py checks).
# workflow/profiles/slurm for a CPU-only SLURM cluster (and tests/test_slurm.py, which runs it on a single-node
# SLURM): the same settings, rules and run times, without GPU requests: every rule's gpu is 0 (it overrides the
# rules' gpu=1), and no gpu_model (it would submit --gpus=<model>:0), gres, tasks_per_gpu or cpus_per_gpu.
# Sized for a {NODE_CPUS}-core node: one cpu per job ({threads}, as set-threads and cpus_per_task); mem_mb the GPU
# profile's divided by {MEM_DIVISOR}, at least {MEM_MIN_MB}. Without an accounting database (no sacct):
#   snakemake --profile workflow/profiles/slurm-cpu --slurm-status-command squeue results/iou.nc
"""


def render(gpu_text: str) -> str:
    """The CPU profile's text from the GPU profile's."""
    return header() + yaml.safe_dump(cpu_profile(yaml.safe_load(gpu_text)), sort_keys=False, width=120)


def write_profiles(directory: Path, check: bool = False) -> Path:
    """Write `directory`/slurm-cpu/config.yaml from `directory`/slurm/config.yaml; `check`: write nothing, raise
    InputError when the file differs from what would be written. Returns the CPU profile's path."""
    source, target = directory / GPU_PROFILE / "config.yaml", directory / CPU_PROFILE / "config.yaml"
    if not source.is_file():
        raise InputError(f"no {source}: run from the repository's root or give --dir (the profiles' directory)")
    text = render(source.read_text())
    if check:
        if not target.is_file() or target.read_text() != text:
            raise InputError(f"{target} is not what `memprune profiles` writes from {source}: run it")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def cmd_profiles(args) -> None:
    path = write_profiles(Path(args.dir), args.check)
    print(f"{path}: {'up to date' if args.check else 'written'}")


def add_profiles_arguments(sub) -> None:
    p = sub.add_parser("profiles", help="write workflow/profiles/slurm-cpu (a CPU-only SLURM cluster) from "
                       "workflow/profiles/slurm")
    p.add_argument("--dir", default="workflow/profiles", help="the profiles' directory (default: workflow/profiles, "
                   "from the repository's root)")
    p.add_argument("--check", action="store_true", help="write nothing; exit status 2 when the CPU profile is not "
                   "what would be written")
    p.set_defaults(func=cmd_profiles)
