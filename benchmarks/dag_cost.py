"""What a target costs from an empty `results/`, summed from the Snakemake benchmark records of the jobs that
built it: every job of the target's DAG (`snakemake -n --forceall`), its rule and `benchmark:` file, and that
file's wall and CPU seconds (the job as it last ran, whatever else ran beside it). Jobs without a record (local
rules, or not run yet) are counted apart. With `--cores N`, the CPU sum divided by N is a lower bound on the wall
time of the whole target on N cores.

One run per `--run` (a target and its arguments, quoted as on the command line); several runs add up, e.g. two
testbeds' leaderboards (`--run results/leaderboard.csv` alone is every stacked testbed's, one DAG):

    python -m benchmarks.dag_cost --cores 2 --run "results/testbed_planted/leaderboard.csv" \
        --run "results/testbed/leaderboard.csv --configfile config/testbed.yaml"
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from memprune.evaluate.aggregate import benchmark_record


def dag_jobs(args: list[str], cwd=None) -> list[tuple[str, str | None]]:
    """(rule, benchmark path or None, relative to `cwd`) of every job `snakemake -n --forceall <args>` plans, run in
    `cwd` (default: here)."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--nolock", *args],
                          capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n {' '.join(args)} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    jobs: list[list] = []
    for line in proc.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            jobs.append([m.group(1), None])
        elif (m := re.match(r"^\s+benchmark: (\S+)$", line)) and jobs:
            jobs[-1][1] = m.group(1)
    return [(rule, bench) for rule, bench in jobs]


def record(path: str) -> tuple[float, float] | None:
    """(wall s, CPU s) of a benchmark file (`memprune.evaluate.aggregate.benchmark_record`); None when absent or
    unreadable."""
    try:
        rec = benchmark_record(path)
        return (rec["s"], rec["cpu_time"]) if rec else None
    except (OSError, KeyError, ValueError):
        return None


def tally(runs: list[list[str]], cwd=None) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Every job of each run (`dag_jobs(run, cwd)`) summed per rule: {rule: [jobs, recorded, wall s, CPU s, longest
    wall s]}, and {rule: jobs without a record}."""
    by_rule: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0])  # jobs, recorded, wall, cpu, max
    unrecorded: dict[str, int] = defaultdict(int)
    for run in runs:
        for rule, bench in dag_jobs(run, cwd):
            entry = by_rule[rule]
            entry[0] += 1
            rec = record(str(Path(cwd or ".") / bench)) if bench else None
            if rec is None:
                unrecorded[rule] += 1
                continue
            entry[1] += 1
            entry[2] += rec[0]
            entry[3] += rec[1]
            entry[4] = max(entry[4], rec[0])
    return dict(by_rule), dict(unrecorded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a target and its snakemake arguments")
    parser.add_argument("--cores", type=int, default=2)
    opts = parser.parse_args()
    by_rule, unrecorded = tally([shlex.split(run) for run in opts.run])
    print(f"{'rule':24s} {'jobs':>5s} {'recorded':>8s} {'wall s':>10s} {'CPU s':>10s} {'longest s':>10s}")
    total = [0, 0, 0.0, 0.0, 0.0]
    for rule, (n, r, wall, cpu, longest) in sorted(by_rule.items(), key=lambda kv: -kv[1][3]):
        print(f"{rule:24s} {n:5d} {r:8d} {wall:10.0f} {cpu:10.0f} {longest:10.0f}")
        total = [total[0] + n, total[1] + r, total[2] + wall, total[3] + cpu, max(total[4], longest)]
    print(f"{'total':24s} {total[0]:5d} {total[1]:8d} {total[2]:10.0f} {total[3]:10.0f} {total[4]:10.0f}")
    bound = max(total[3] / opts.cores, total[4])
    print(f"lower bound on {opts.cores} cores (CPU / cores, or the longest job): {bound:.0f} s = {bound / 60:.1f} min")
    if unrecorded:
        print("jobs without a benchmark record (local rules, or not run): "
              + ", ".join(f"{rule} {n}" for rule, n in sorted(unrecorded.items())))


if __name__ == "__main__":
    main()
