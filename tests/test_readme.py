"""Every command the README shows works as written: each `snakemake` line of its bash blocks is dry-run (with
`-n` added) in a directory laid out as a fresh clone, after the block's other commands (`cp ...`) ran there."""

import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

CLONE_ENTRIES = ("Snakefile", "config.yaml", "config", "rules", "workflow", "resources", "report", "envs")


def readme_commands() -> list[list[str]]:
    """The README's bash blocks as lists of commands (continuations joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    out = []
    for block in blocks:
        text = re.sub(r"\\\n\s*", " ", block)
        commands = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line, comments=True))
        out.append(commands)
    return out


def snakemake_lines():
    for block in readme_commands():
        for i, cmd in enumerate(block):
            if "snakemake" in cmd:
                yield block[:i], cmd[cmd.index("snakemake"):]


LINES = list(snakemake_lines())


def test_readme_shows_the_two_setup_commands_and_snakemake_lines():
    setup = [cmd for block in readme_commands() for cmd in block if cmd[:2] == ["pip", "install"]]
    assert len(setup) == 2 and any("pytest" in c for c in setup) and any("snakemake" in c for c in setup)
    assert len(LINES) >= 8


def _dry_run(before, command, wd):
    for entry in CLONE_ENTRIES:
        (wd / entry).symlink_to(REPO / entry)
    for cmd in before:  # e.g. `cp config.yaml my.yaml`
        if cmd[0] in ("cp", "mkdir"):
            subprocess.run(cmd, cwd=wd, check=True)
    argv = [sys.executable, "-m", "snakemake", *command[1:]]
    if "-n" not in argv:
        argv.insert(3, "-n")
    return subprocess.run(argv, cwd=wd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Every line's dry run, as many at once as there are cores (each is one single-threaded DAG build)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("snakemake_executor_plugin_slurm")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = [pool.submit(_dry_run, before, command, tmp_path_factory.mktemp("readme"))
                   for before, command in LINES]
        return [f.result() for f in futures]


@pytest.mark.parametrize("index", range(len(LINES)), ids=[" ".join(c)[:70] for _, c in LINES])
def test_readme_snakemake_line_dry_runs_as_written(index, dry_runs):
    command, proc = LINES[index][1], dry_runs[index]
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Job stats" in proc.stdout or "Nothing to be done" in proc.stdout + proc.stderr
