"""The SD1.5 DAG on a cluster, from the per-call costs of docs/cluster.md (benchmarks/cluster_makespan.py): every
GPU job fits the run time the SLURM profile gives its rule, and on 8 GPUs the DAG's makespan stays within 1.25x of
its GPU-hours / 8 (NeMo's searches and the recovery attack cut into jobs: `chunks`)."""

import pytest
import yaml

from benchmarks.cluster_makespan import costed, load_config, simulate, snakemake_dag
from conftest import REPO


def test_list_scheduling_on_a_known_dag():
    # a chain 0 -> 1 -> 4 (3 s, 1 s on a GPU, then 1 s without one) beside two 2 s GPU jobs
    seconds, gpu, edges = [3.0, 1.0, 2.0, 2.0, 1.0], [True, True, True, True, False], [(0, 1), (1, 4)]
    one = simulate(seconds, gpu, edges, 1)
    assert one["makespan"] == 8 and one["ideal"] == 8 and one["critical_path"] == 5  # the chain first
    two = simulate(seconds, gpu, edges, 2)
    assert two["makespan"] == 5 and two["ideal"] == 4  # the chain on one GPU, the 2 s jobs on the other
    assert simulate(seconds, gpu, edges, 64)["makespan"] == 5


@pytest.mark.slow
def test_every_sd15_job_fits_its_profile_run_time_and_8_gpus_stay_near_the_ideal():
    cfg = load_config(["config/sd15.yaml"])
    jobs, edges = snakemake_dag(["config/sd15.yaml"], "results/sd15/leaderboard.csv")
    seconds, gpu, unmodelled = costed(jobs, cfg)
    assert unmodelled == ["eval_score"]  # SSCD and CLIP scoring: not measured (docs/cluster.md)
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    limit = {rule: res.get("runtime", profile["default-resources"]["runtime"]) * 60
             for rule, res in profile["set-resources"].items()}
    over = sorted({(rule, round(s / 60), round(limit.get(rule, 0) / 60)) for (rule, _), s in zip(jobs, seconds)
                   if s > limit.get(rule, profile["default-resources"]["runtime"] * 60)})
    assert not over, f"jobs over their profile run time (rule, minutes, limit): {over}"
    eight = simulate(seconds, gpu, edges, 8)
    assert eight["makespan"] <= 1.25 * eight["ideal"], eight


@pytest.mark.slow
def test_the_documented_command_prints_both_dags_on_each_gpu_count():
    import json
    import re
    import shlex
    import subprocess
    import sys

    text = (REPO / "docs/cluster.md").read_text()
    line = re.search(r"^python -m benchmarks\.cluster_makespan .*$", text, re.M).group(0)
    argv = shlex.split(line)
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(r) for r in proc.stdout.splitlines()]
    runs = {(r["dag"], r["gpus"]): r for r in rows if "gpus" in r}
    assert {g for _, g in runs} == {1, 8, 64} and len(runs) == 6
    chunked, single = (runs[dag, 8]["makespan_over_ideal"] for dag in ("as configured", "one job per set or model"))
    assert chunked <= 1.25 < single
