"""What the report reads, and how it names it: the configs (each one file or several overlaid, its model and plan),
the result files of each config's model, the command that builds a missing one, and the commit stamp."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from memprune.errors import InputError

DEFAULT = "config.yaml"
CORES = 2  # the commands shown, and the DAG cost's lower bound, are for 2 cores (the testbeds' machine)


def repo() -> Path:
    from memprune.plan.preflight import REPO

    return REPO


def resolve(root: Path, name: str) -> Path:
    """A config file as given: from here, else from the directory the workflow ran in (`root`), else from the
    repository (as the plan finds the shipped files); as given when it is nowhere (reading it names it)."""
    path = Path(name)
    for where in (path, root / path, repo() / path):
        if where.exists():
            return where
    return path


@dataclass
class Target:
    """One config: its files as given (overlaid in order), its validated config and plan, its results folder."""

    files: list[str]
    root: Path
    results: Path
    paths: list[Path] = field(init=False)
    config: dict = field(init=False)
    plan: object = field(init=False)

    def __post_init__(self):
        from memprune.plan.config import Plan
        from memprune.plan.preflight import read_configs

        self.paths = [resolve(self.root, f).resolve() for f in self.files]
        self.config, _ = read_configs(self.paths)
        self.plan = Plan(self.config, repo())

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def label(self) -> str:
        return " + ".join(f"`{f}`" for f in self.files)

    def path(self, rel: str) -> Path:
        """A result file of this config's model (`rel` under results/<model>/)."""
        return self.results / self.name / rel

    def shown(self, rel: str) -> str:
        return str(self.path(rel))

    def has(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def configfile_args(self) -> list[str]:
        """The --configfile words of a snakemake run of this config (none for the default config.yaml)."""
        return [] if self.files == [DEFAULT] else ["--configfile", *self.files]

    def command(self, *rels: str) -> str:
        """The snakemake command that builds `results/<model>/<rel>` (targets go before --configfile)."""
        words = ["snakemake", "--cores", str(CORES), *(f"results/{self.name}/{r}" for r in rels),
                 *self.configfile_args()]
        return "`" + " ".join(shlex.quote(w) for w in words) + "`"

    def missing(self, rel: str, what: str) -> str:
        return f"{what}: not built (`{self.shown(rel)}`); {self.command(rel)} builds it."


def default_groups(root: Path) -> list[list[str]]:
    """config.yaml and the configs of its `leaderboard.configs` (each a file or files overlaid in order)."""
    from memprune.plan.preflight import read_configs

    config, _ = read_configs([resolve(root, DEFAULT)])
    groups = [[DEFAULT]]
    for entry in (config.get("leaderboard") or {}).get("configs") or []:
        group = [entry] if isinstance(entry, str) else list(entry)
        if group not in groups:
            groups.append(group)
    return groups


def targets(groups: list[list[str]] | None, results: Path) -> list[Target]:
    """One Target per config group (default: `default_groups`); two groups running one model are an error."""
    root = results.parent
    out: dict[str, Target] = {}
    for group in groups or default_groups(root):
        t = Target(list(group), root, results)
        if t.name in out:
            raise InputError(f"{t.label} and {out[t.name].label} both run model {t.name!r}: give each model once")
        out[t.name] = t
    return list(out.values())


def _git(where: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def commit(root: Path, out: Path | None = None) -> str:
    """`git rev-parse --short HEAD` of the checkout the results were made in (`root`, else the package's), with
    "+ uncommitted changes" when a tracked file differs from it (`git status --porcelain`, untracked files not
    counted, nor the report's own output `out`)."""
    for where in dict.fromkeys([root.resolve(), repo()]):
        head = _git(where, "rev-parse", "--short", "HEAD")
        if head:
            break
    else:
        return "unknown (not a git checkout)"
    top = Path((_git(where, "rev-parse", "--show-toplevel") or str(where)).strip())
    skip = None
    if out is not None and out.resolve().is_relative_to(top):
        skip = out.resolve().relative_to(top).as_posix()
    changed = [line[3:] for line in (_git(where, "status", "--porcelain", "--untracked-files=no") or "").splitlines()]
    dirty = [p for p in changed if p.split(" -> ")[-1].strip('"') != skip]
    return head.strip() + (" + uncommitted changes" if dirty else "")


@dataclass
class Stamp:
    """The line above each table: its config, the commit, the files it was read from."""

    commit: str

    def __call__(self, target: Target, rels: list[str], note: str = "") -> str:
        parts = [f"Config {target.label} (model `{target.name}`), commit {self.commit}"]
        if rels:
            parts.append("read from " + ", ".join(f"`{target.shown(r)}`" for r in rels))
        return "; ".join(parts + ([note] if note else [])) + "."
