"""What planning a DAG costs: `snakemake -n` (parse the Snakefile, check the config, build the DAG), which every
snakemake call pays, dry runs and each job a cluster executor starts (it parses the Snakefile again).

Each tree (a checkout of this repository; its `workflow/` put first on PYTHONPATH) is laid out as a fresh clone in a
temporary directory and dry-run on the same targets, the trees interleaved, after one warm-up each. Prints the
median wall and CPU seconds (the dry run's process, from its rusage) and, with two trees, their ratios.

    python -m benchmarks.plan_time --trees /path/to/old/checkout . --repeats 5
    python -m benchmarks.plan_time --trees /path/to/old/checkout . --targets results/leaderboard.csv ""
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memprune.plan import lay_out_clone

DEFAULT_TARGETS = [[], ["results/testbed_planted/leaderboard.csv"],
                   ["results/sd15/eval.nc", "--configfile", "config/sd15.yaml"]]


def dry_run(tree: Path, wd: Path, args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `snakemake -n` in `wd` (a clone-like layout of `tree`)."""
    env = {**os.environ, "PYTHONPATH": str(tree / "workflow"), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", *args], cwd=wd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: snakemake -n {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(".")], help="checkouts to compare (1 or 2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--targets", nargs="+", help="the dry runs' arguments, one string each (\"\": rule all); "
                        "default: rule all, the planted leaderboard and SD1.5's evaluation")
    opts = parser.parse_args()
    targets = [shlex.split(t) for t in opts.targets] if opts.targets else DEFAULT_TARGETS
    trees = [t.resolve() for t in opts.trees]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for i, tree in enumerate(trees):
            wd = Path(tmp) / f"tree{i}"
            lay_out_clone(tree, wd)
            dirs.append(wd)
        print(f"{'targets':58s} " + "  ".join(f"{'tree ' + str(i) + ' wall / CPU s':>24s}" for i in range(len(trees)))
              + ("  ratio wall / CPU (tree 1 / tree 0)" if len(trees) == 2 else ""))
        for args in targets:
            for tree, wd in zip(trees, dirs):
                dry_run(tree, wd, args)  # warm-up: page cache, .snakemake/
            samples = [[] for _ in trees]
            for _ in range(opts.repeats):
                for i, (tree, wd) in enumerate(zip(trees, dirs)):
                    samples[i].append(dry_run(tree, wd, args))
            med = [(statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for s in samples]
            line = f"{' '.join(args) or '(rule all)':58s} " + "  ".join(f"{w:11.2f} / {c:10.2f}" for w, c in med)
            if len(med) == 2:
                line += f"  {med[1][0] / med[0][0]:.2f} / {med[1][1] / med[0][1]:.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
