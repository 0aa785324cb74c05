"""Section 4, what it costs: per config, the leaderboard's time and locate columns per compared model; and, where
the jobs left Snakemake benchmark records (`benchmarks/<model>/`), the CPU-seconds of every job that builds the
files this report read, from empty, summed per rule as `python -m benchmarks.dag_cost` sums them (its functions)."""

from __future__ import annotations

from memprune.report_md import cells
from memprune.report_md.removal import read_rows
from memprune.report_md.sources import CORES, Stamp, Target, repo

TITLE = "What it costs"
INTRO = ("*locate*: the seconds an edit took to make (masks and pruning, or its training), per prompt it was made "
         "from, and in all; time per image: every compared model generating the same prompts in one process, rounds "
         "interleaved, medians (`timing.nc`), and its overhead and ratio to the unedited model. The DAG's cost: the "
         "CPU-seconds of every job that builds the files read above, from empty, summed from the jobs' Snakemake "
         "benchmark records; that sum over the cores is a lower bound on the wall time.")
TIME_COLUMNS = (("locate_seconds_per_prompt", "locate s per prompt", cells.seconds),
                ("edit_seconds", "locate s in all", cells.seconds),
                ("seconds_per_image", "s per image", cells.ratio),
                ("overhead_seconds_per_image", "overhead s per image", lambda v: cells.difference(v, None, None)),
                ("time_per_image_vs_none", "time per image vs unedited", cells.ratio))
# the files the report reads, as the snakemake targets that build them (iou.nc's rule writes density.nc too)
BUILT_BY = ("iou.nc", "localization.nc", "report.nc", "leaderboard.csv", "eval_summary.csv", "attack/table.csv",
            "recovery.csv")


def time_table(rows: list[dict]) -> list[str]:
    present = [c for c in TIME_COLUMNS if any(c[0] in r for r in rows)]
    body = [[cells.model_label(r["model"]), *(fmt(r.get(name)) for name, _, fmt in present)] for r in rows]
    return cells.table(["model", *(head for _, head, _ in present)], body)


def dag_cost():
    """benchmarks/dag_cost.py: importable from the repository's root, else loaded from the package's checkout."""
    try:
        from benchmarks import dag_cost as module
    except ImportError:
        import importlib.util

        spec = importlib.util.spec_from_file_location("benchmarks_dag_cost", repo() / "benchmarks" / "dag_cost.py")
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def dag_targets(t: Target) -> list[str]:
    return [f"results/{t.name}/{rel}" for rel in BUILT_BY if t.has(rel)]


def dag_lines(t: Target, stamp: Stamp) -> list[str]:
    """The cost of the DAG that builds this config's files read above, from its jobs' benchmark records."""
    if t.results.name != "results" or not any((t.root / "benchmarks" / t.name).rglob("*.tsv")):
        return []
    targets = dag_targets(t)
    if not targets:
        return []
    args = [*targets, *(["-s", str(repo() / "Snakefile")] if not (t.root / "Snakefile").exists() else []),
            "--configfile", *map(str, t.paths)]
    module = dag_cost()
    try:
        by_rule, unrecorded = module.tally([args], cwd=t.root)
    except SystemExit as e:  # dag_jobs' failed plan
        return [f"The DAG's cost: `snakemake -n` could not plan {', '.join(targets)}: "
                f"{str(e).splitlines()[0] if str(e) else 'failed'}.", ""]
    rows, total = [], [0, 0, 0.0, 0.0, 0.0]
    for rule, (n, r, wall, cpu, longest) in sorted(by_rule.items(), key=lambda kv: -kv[1][3]):
        rows.append([rule, f"{n}", f"{r}", f"{cpu:.0f}", f"{wall:.0f}"])
        total = [total[0] + n, total[1] + r, total[2] + wall, total[3] + cpu, max(total[4], longest)]
    rows.append(["total", f"{total[0]}", f"{total[1]}", f"{total[3]:.0f}", f"{total[2]:.0f}"])
    bound = max(total[3] / CORES, total[4])
    note = (f"the benchmark records under `benchmarks/{t.name}/` of the jobs `snakemake -n --forceall` plans for "
            f"{', '.join(f'`{x}`' for x in targets)}")
    lines = [stamp(t, [], note), "",
             *cells.table(["rule", "jobs", "with a record", "CPU s", "wall s"], rows), "",
             f"At least {bound / 60:.1f} min on {CORES} cores from empty (the CPU-seconds over {CORES} cores, or the "
             "longest job)."]
    if unrecorded:
        lines[-1] += (" Jobs without a record (local rules, or not run): "
                      + ", ".join(f"{rule} {n}" for rule, n in sorted(unrecorded.items())) + ".")
    return lines + [""]


def section(targets: list[Target], stamp: Stamp) -> list[str]:
    lines = [f"## 4. {TITLE}", "", INTRO, ""]
    for t in targets:
        lines += [f"### {t.name} ({t.label})", ""]
        if t.has("leaderboard.csv"):
            lines += [stamp(t, ["leaderboard.csv"]), "", *time_table(read_rows(t.path("leaderboard.csv"))), ""]
        else:
            lines += [t.missing("leaderboard.csv", "Time per image and the cost of each edit"), ""]
        lines += dag_lines(t, stamp)
    return lines
