"""The `memprune report` subcommand."""

from __future__ import annotations

from pathlib import Path

HELP = "docs/results.md from the result files: one table per question and config, stamped with config and commit"
DESCRIPTION = """Write the measured results (docs/results.md) from the files under results/: 1. does the
memorization subspace exist (iou.nc, density.nc, localization.nc, report.nc), 2. does pruning remove it and 3. does
it stay removed (leaderboard.csv, else eval_summary.csv, attack/table.csv, recovery.csv), 4. what it costs
(leaderboard.csv, and the jobs' benchmark records). Each table is stamped with its config files, the commit and the
files it was read from; a file not built is named with the snakemake command that builds it. Run it from the
repository's root, e.g. `memprune report --out docs/results.md`, or for two configs, the second overlaid on another:
`memprune report --configfile config/testbed.yaml --configfile config/testbed_finetune.yaml config/finetune/e16.yaml
--out results.md`."""


def cmd_report(args) -> None:
    from memprune.report_md.document import write_report

    write_report(args.configfile, Path(args.results), Path(args.out), args.keep_absent)
    print(f"wrote {args.out}")


def add_report_arguments(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=DESCRIPTION)
    p.add_argument("--configfile", nargs="+", action="append", metavar="FILE",
                   help="one config: its files overlaid in order, as snakemake's --configfile takes them; repeat the "
                        "option once per config (default: config.yaml and the configs of its leaderboard.configs)")
    p.add_argument("--results", default="results",
                   help="the results folder (default: results; its parent is where the workflow ran)")
    p.add_argument("--out", required=True, help="the Markdown file to write (written to a temporary path, then "
                                                "renamed), e.g. docs/results.md")
    p.add_argument("--keep-absent", action="store_true",
                   help="a config whose results folder (results/<model>) is not here keeps its subsections that hold a "
                        "table from the --out file written before (e.g. a testbed run on another machine), with their "
                        "own commit")
    p.set_defaults(func=cmd_report)
