"""The report as a whole: its head, the four sections in order, and the atomic write."""

from __future__ import annotations

from pathlib import Path

from memprune.report_md.sources import Stamp, commit, targets

TITLE = "# Measured results"


def render(groups: list[list[str]] | None, results: Path, out: Path | None = None) -> str:
    """The report's Markdown for the configs `groups` (each a list of files overlaid in order; None: config.yaml and
    its `leaderboard.configs`) from the result files under `results`."""
    from memprune.report_md import cost, removal, subspace

    configs = targets(groups, Path(results))
    stamp = Stamp(commit(Path(results).parent, out))
    listed = ", ".join(f"{t.label} (model `{t.name}`)" for t in configs)
    lines = [TITLE, "",
             f"Written by `memprune report` from the result files under `{results}`, for the configs {listed}; "
             f"commit {stamp.commit}. Each table names its config and the files it was read from; 95% intervals in "
             "brackets, computed as docs/outputs.md's section Intervals says.", ""]
    for part in (subspace.section, removal.section_removed, removal.section_stays, cost.section):
        lines += part(configs, stamp)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(groups: list[list[str]] | None, results: Path, out: Path) -> str:
    """`render`, then written to `out` atomically (a temporary sibling renamed into place). Returns the text."""
    from memprune.formats.store import atomic_write_text

    text = render(groups, results, Path(out))
    atomic_write_text(Path(out), text)
    return text
