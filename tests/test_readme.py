"""Every command the README and docs/ show works as written: each `snakemake` line of their bash blocks is dry-run
(with `-n` added) in a directory laid out as a fresh clone, after the block's other commands (`cp ...`,
`printf ... > file`) ran there; so is every `snakemake` command that a config or profile shows in its comments
(`CONFIG_FILES`). The README stays a short entry point: at most 150 lines, exactly two set-up
commands (the main job, and the tests, which `.ci/run` runs with `--slow`), and no link outside the repository."""

import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from memprune.plan import lay_out_clone

DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
SHELL_STEPS = ("cp", "mkdir", "printf", "echo")  # the set-up steps a block may run before its snakemake lines


def bash_blocks(path) -> list[list[str]]:
    """A file's bash blocks as lists of command lines (continuations joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    out = []
    for block in blocks:
        text = re.sub(r"\\\n\s*", " ", block)
        out.append([line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")])
    return out


def snakemake_lines():
    """(file, the block's earlier lines, the snakemake command as argv) for every snakemake line."""
    for path in DOCS:
        for block in bash_blocks(path):
            for i, line in enumerate(block):
                cmd = shlex.split(line, comments=True)
                if "snakemake" in cmd:
                    yield path.relative_to(REPO).as_posix(), block[:i], cmd[cmd.index("snakemake"):]


# The files whose comments show how to run them: the configs and the profiles.
CONFIG_FILES = ([REPO / "config.yaml"] + sorted((REPO / "config").rglob("*.yaml"))
                + sorted((REPO / "workflow/profiles").glob("*/config.yaml")))


def comment_commands(path) -> list[list[str]]:
    """The `snakemake ...` commands of a YAML file's comments as argv, each from `snakemake` to the end of its line
    (a trailing backslash continues it on the next comment line) or to a closing backtick."""
    comments = [line.split("#", 1)[1] for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(comments))
    return [shlex.split(m) for m in re.findall(r"(?<![\w/-])snakemake\s[^`\n]*", text)]


def config_comment_lines():
    """(file, no earlier lines, the snakemake command as argv) for every command in a config's comments."""
    for path in CONFIG_FILES:
        for command in comment_commands(path):
            yield path.relative_to(REPO).as_posix(), [], command


LINES = list(snakemake_lines()) + list(config_comment_lines())


def ci_command() -> str:
    """The command .ci/run runs: its last line."""
    return [l for l in (REPO / ".ci/run").read_text().splitlines() if l.strip()][-1].strip()


def test_readme_shows_exactly_the_two_setup_commands_the_ci_runs():
    setup = [line for block in bash_blocks(REPO / "README.md") for line in block if line.startswith("pip install")]
    assert len(setup) == 2, setup
    main_job, tests = setup
    assert ci_command() == tests + " --slow"  # CI runs the README's test command with its documented switch
    assert "`--slow`" in (REPO / "README.md").read_text()
    install = tests.split(" && ")[0]
    assert main_job.split(" && ")[0] == install and main_job.split(" && ")[1].startswith("snakemake --cores")


def test_readme_is_short_and_points_only_inside_the_repository():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert not re.search(r"(?<![.\w])\.\./", text) and "/work/" not in text  # no ../shared, no absolute paths


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name}: {target}"


def test_every_config_and_rule_file_is_documented():
    """A newcomer finds every ready config in docs/configuration.md and every stage file in the README's layout."""
    configuration = (REPO / "docs/configuration.md").read_text()
    missing = [c.relative_to(REPO).as_posix() for c in sorted((REPO / "config").rglob("*.yaml"))
               if c.relative_to(REPO).as_posix() not in configuration and c.name not in configuration]
    assert not missing, f"docs/configuration.md, 'The ready configs': add {missing}"
    layout = re.search(r"^rules/ .*?(?=^\S)", (REPO / "README.md").read_text(), flags=re.S | re.M).group(0)
    stages = [f.stem for f in sorted((REPO / "rules").glob("*.smk"))]
    assert not [s for s in stages if not re.search(rf"\b{s}\b", layout)], f"README layout, rules/: list {stages}"


def test_every_config_comment_command_is_planned():
    """The commands the SD configs, the testbed configs and the profiles show in their comments are among LINES."""
    files = {f for f, _, _ in LINES}
    shown = {"config/sd15.yaml", "config/sd2.yaml", "config/testbed.yaml", "config/testbed_closed_loop.yaml",
             "config/testbed_finetune.yaml", "config/finetune/e16.yaml", "workflow/profiles/local/config.yaml",
             "workflow/profiles/slurm/config.yaml", "workflow/profiles/slurm-cpu/config.yaml"}
    assert shown <= files, shown - files
    closed_loop = [c for f, _, c in LINES if f == "config/testbed_closed_loop.yaml"]
    assert closed_loop and "results/testbed/detection.nc" in closed_loop[0]  # continued over two comment lines


def test_every_doc_has_snakemake_lines_planned():
    files = {f for f, _, _ in LINES}
    assert {"README.md", "docs/configuration.md", "docs/methods.md", "docs/testbeds.md", "docs/cluster.md"} <= files
    assert sum(f == "README.md" for f, _, _ in LINES) >= 6


def _written(argv: list[str]) -> list[str]:
    """The paths a set-up step writes: a `cp`'s destination, `mkdir`'s folders, a redirection's file."""
    if argv[0] == "cp":
        return argv[-1:]
    if argv[0] == "mkdir":
        return [a for a in argv[1:] if not a.startswith("-")]
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in (">", ">>")]


def _dry_run(before, command, wd):
    import shutil

    lay_out_clone(REPO, wd)
    for line in before:  # e.g. `cp config.yaml my.yaml`, `printf '...' > overlay.yaml`
        argv = shlex.split(line)
        if argv[0] in SHELL_STEPS:
            for path in _written(argv):  # a step writing into a linked folder (a new module) writes into a copy
                top = wd / path.split("/")[0]
                if top.is_symlink() and top.is_dir():
                    top.unlink()
                    shutil.copytree(REPO / top.name, top, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            subprocess.run(["bash", "-c", line], cwd=wd, check=True)
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
                   for _, before, command in LINES]
        return [f.result() for f in futures]


@pytest.mark.parametrize("index", range(len(LINES)), ids=[f"{f}: {' '.join(c)[:70]}" for f, _, c in LINES])
@pytest.mark.slow
def test_snakemake_line_dry_runs_as_written(index, dry_runs):
    command, proc = LINES[index][2], dry_runs[index]
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Job stats" in proc.stdout or "Nothing to be done" in proc.stdout + proc.stderr
