"""The report as a whole: its head, the four sections in order, and the atomic write."""

from __future__ import annotations

from pathlib import Path

from memprune.report_md.sources import Stamp, commit, targets

TITLE = "# Measured results"


def render(groups: list[list[str]] | None, results: Path, out: Path | None = None, earlier: str | None = None) -> str:
    """The report's Markdown for the configs `groups` (each a list of files overlaid in order; None: config.yaml and
    its `leaderboard.configs`) from the result files under `results`. `earlier`: a report written before; a config
    whose results folder (`results/<model>`) is not here keeps its subsections with tables from it, as they were
    (`keep`)."""
    from memprune.report_md import cost, removal, subspace

    configs = targets(groups, Path(results))
    stamp = Stamp(commit(Path(results).parent, out))
    listed = ", ".join(f"{t.label} (model `{t.name}`)" for t in configs)
    absent = [t.name for t in configs if not (Path(results) / t.name).is_dir()] if earlier else []
    lines = [TITLE, "",
             f"Written by `memprune report` from the result files under `{results}`, for the configs {listed}; "
             f"commit {stamp.commit}. Each table names its config and the files it was read from; 95% intervals in "
             "brackets, computed as docs/outputs.md's section Intervals says.", ""]
    for part in (subspace.section, removal.section_removed, removal.section_stays, cost.section):
        lines += part(configs, stamp)
    text = "\n".join(lines).rstrip("\n") + "\n"
    return keep(text, earlier, absent) if absent else text


def _blocks(text: str) -> list[tuple[str, str, list[str]]]:
    """A report's lines grouped as (section heading, subsection heading or "", lines), in order."""
    blocks, section = [("", "", [])], ""
    for line in text.splitlines():
        if line.startswith("## ") or line.startswith("### "):
            section = line if line.startswith("## ") else section
            blocks.append((section, line if line.startswith("### ") else "", []))
        blocks[-1][2].append(line)
    return blocks


def keep(text: str, earlier: str, models: list[str]) -> str:
    """`text` with each subsection of a model in `models` (`### <model> (...)`) replaced by `earlier`'s under the
    same section, where `earlier` has it with a table; the head says which were kept."""
    theirs = {(section, sub): lines for section, sub, lines in _blocks(earlier)
              if sub and any(line.startswith("|") for line in lines)}
    kept, out = [], []
    for section, sub, lines in _blocks(text):
        model = sub.split(" ")[1] if sub else ""
        if model in models and (section, sub) in theirs:
            lines = theirs[section, sub]
            kept.append(model)
        out += lines
    if kept:
        names = ", ".join(f"`{m}`" for m in dict.fromkeys(kept))
        head = out.index("") + 1  # the paragraph under the title
        out[head] += (f" The subsections of {names} are kept from the report written before (their results are not "
                      "under the results folder here); their tables name the commit they were made at.")
    return "\n".join(out).rstrip("\n") + "\n"


def write_report(groups: list[list[str]] | None, results: Path, out: Path, keep_absent: bool = False) -> str:
    """`render`, then written to `out` atomically (a temporary sibling renamed into place). Returns the text.
    `keep_absent`: configs whose results are not here keep their subsections from the `out` written before."""
    from memprune.formats.store import atomic_write_text

    earlier = Path(out).read_text() if keep_absent and Path(out).is_file() else None
    text = render(groups, results, Path(out), earlier)
    atomic_write_text(Path(out), text)
    return text
