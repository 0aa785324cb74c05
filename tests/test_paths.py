"""Every repository path, `memprune.*` module and `memprune <step>` command that the code, rules, docs and configs
name exists: a renamed or moved file leaves no stale reference in a docstring, comment or doc.

The tracked text files (`git ls-files`: *.py, *.smk, Snakefile, *.md, *.yaml, *.yml, *.sh, *.toml, .ci/run) are
scanned for
* paths from the repository root (`workflow/...`, `rules/...`, `tests/...`, `docs/...`, ...): the file or folder
  must exist;
* module paths relative to the package (`<subpackage>/<module>.py`, e.g. `attacks/recovery.py`): the module must
  exist under workflow/memprune/<subpackage>/;
* markdown links to files (`[...](results.md#nemo)`): the file, relative to the linking file, and its heading;
* dotted names `memprune.x.y`: a module or package under workflow/memprune, or a module and a name it binds
  (read with `ast`, nothing is imported); `python -m benchmarks.x`: benchmarks/x.py;
* commands `memprune <step>` (in backticks, or a rule's `memprune("<step>", ...)`): a subcommand of the CLI.
Not checked: what the workflow writes (`results/`, `data/`, `logs/`, or whatever .gitignore ignores, such as
Snakemake's benchmark records under `benchmarks/<model>/`), templates (`{`, `<`, `*`, `...` in the path, or a
one-capital-letter name such as `config/X.yaml`), and paths outside the repository (`../shared/...`)."""

import argparse
import ast
import re
import subprocess
from functools import cache
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "workflow" / "memprune"
SUFFIXES = (".py", ".smk", ".md", ".yaml", ".yml", ".sh", ".toml")
EXACT = ("Snakefile", ".ci/run")
NOT_SCANNED = ("tests/test_paths.py",)  # this file: its examples of stale names are stale on purpose
TOP = ("workflow", "rules", "config", "resources", "tests", "benchmarks", "experiments", "docs", "envs", "report",
       ".ci")
SUBPACKAGES = tuple(sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
OUTPUTS = ("results/", "data/", "logs/")
TEMPLATE = ("{", "}", "<", ">", "*", "...", "$")
PLACEHOLDER = re.compile(r"(^|/)[A-Z](\.\w+)?(/|$)")  # config/X.yaml, benchmarks.X

# A path token: not glued to a preceding path or word character (so `../shared/config/x`, `results/x/config/y` and
# `workflow/memprune/attacks/x.py` yield no inner match), then the path's characters; template characters are taken
# into the token so that a template is recognised and skipped as a whole.
PATH_CHARS = r"[\w./\-{}<>*$]"
ROOT_PATH = re.compile(r"(?<![\w./\-])((?:%s)/%s*)" % ("|".join(re.escape(t) for t in TOP), PATH_CHARS))
MODULE_PATH = re.compile(r"(?<![\w./\-])((?:%s)/\w+\.py)(?![\w.\-/])" % "|".join(SUBPACKAGES))
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
DOTTED = re.compile(r"(?<![\w./\-])(memprune(?:\.\w+)+)(?![\w\-])")
TOOL = re.compile(r"-m benchmarks\.(\w+)")  # python -m benchmarks.dag_cost
COMMAND = re.compile(r"`memprune ([a-z][\w-]*)|\bmemprune\(\"([a-z][\w-]*)\"")


def tracked_texts() -> dict[str, str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    names = [n for n in out.split("\0")
             if (n.endswith(SUFFIXES) or n in EXACT) and n not in NOT_SCANNED and (REPO / n).is_file()]
    return {n: (REPO / n).read_text(errors="replace") for n in names}


def template(token: str) -> bool:
    return any(t in token for t in TEMPLATE) or bool(PLACEHOLDER.search(token))


def references(name: str, text: str):
    """(line number, kind, token) for each path, module or command the file `name` names; a path is relative to
    the repository root."""
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in ROOT_PATH.finditer(line):
            token = m.group(1).rstrip(".")
            if not token.startswith(OUTPUTS) and not template(token):
                yield lineno, "path", token
        for m in MODULE_PATH.finditer(line):
            yield lineno, "path", f"workflow/memprune/{m.group(1)}"
        if name.endswith(".md"):
            for m in MD_LINK.finditer(line):
                if not re.match(r"[a-z]+:", m.group(1)):  # http(s):, mailto:
                    yield lineno, "link", m.group(1)
        for m in DOTTED.finditer(line):
            yield lineno, "module", m.group(1)
        for m in TOOL.finditer(line):
            if not template(m.group(1)):
                yield lineno, "path", f"benchmarks/{m.group(1)}.py"
        for m in COMMAND.finditer(line):
            yield lineno, "command", m.group(1) or m.group(2)


@cache
def top_level_names(module: Path) -> frozenset[str]:
    """The names a module binds at its top level (definitions, assignments, imports, also under `if`/`try`)."""
    names = set()
    for node in ast.parse(module.read_text()).body:
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(sub.name)
            elif isinstance(sub, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in sub.targets if isinstance(sub, ast.Assign) else [sub.target]:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in sub.names)
    return frozenset(names)


def module_resolves(dotted: str) -> bool:
    """`memprune.a.b...`: a package or module under workflow/memprune, or one followed by a name it binds (what
    follows that name, an attribute of it, is not checked)."""
    parts = dotted.split(".")[1:]
    here = PACKAGE
    for i, part in enumerate(parts):
        if (here / part / "__init__.py").is_file():
            here = here / part
        elif (here / f"{part}.py").is_file():
            names = top_level_names(here / f"{part}.py")
            rest = parts[i + 1:]
            return not rest or rest[0] in names or "__getattr__" in names
        else:  # a name the package binds, e.g. memprune.plan.lay_out_clone
            names = top_level_names(here / "__init__.py")
            return part in names or "__getattr__" in names
    return True


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_resolves(source: str, target: str) -> bool:
    path, _, anchor = target.partition("#")
    file = ((REPO / source).parent / path).resolve() if path else REPO / source
    if not file.is_relative_to(REPO):  # outside the repository (../shared/...): not checked
        return True
    if not file.exists():
        return False
    if not anchor or file.suffix != ".md":
        return True
    headings = re.findall(r"^#+\s+(.*?)\s*#*$", file.read_text(), flags=re.M)
    return anchor in {slug(h) for h in headings}


@cache
def cli_commands() -> frozenset[str]:
    from memprune.cli import build_parser

    actions = build_parser()._actions
    return frozenset(next(a for a in actions if isinstance(a, argparse._SubParsersAction)).choices)


def problems(texts: dict[str, str]) -> list[str]:
    """`file:line: name (what is wrong)` for each stale name in the files {repository path: text}."""
    found, missing = [], []
    for name, text in texts.items():
        for lineno, kind, token in references(name, text):
            where = f"{name}:{lineno}"
            if kind == "path" and not (REPO / token).exists():
                missing.append((where, token))
            elif kind == "link" and not link_resolves(name, token):
                found.append(f"{where}: ({token}) (no such file, or no such heading in it)")
            elif kind == "module" and not module_resolves(token):
                found.append(f"{where}: {token} (no such module, or no such name in it, under workflow/memprune)")
            elif kind == "command" and token not in cli_commands():
                found.append(f"{where}: `memprune {token}` (no such subcommand; see `memprune --help`)")
    if missing:  # what .gitignore ignores is what the workflow writes
        res = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, capture_output=True,
                             text=True, input="\n".join(sorted({token for _, token in missing})))
        assert res.returncode in (0, 1), res.stderr
        outputs = set(res.stdout.splitlines())
        found += [f"{where}: {token} (no such file or folder)" for where, token in missing if token not in outputs]
    return sorted(found, key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


def test_named_paths_modules_and_commands_exist():
    found = problems(tracked_texts())
    assert not found, f"{len(found)} stale name(s):\n" + "\n".join(found)


def test_the_check_catches_stale_names_and_skips_templates():
    stale = '''"""Adversarial fine-tuning (attacks/adversarial.py), see tests/test_finetune_testbed.py.
Masks: `memprune.localize.wanda_packed.scores_packed`, `memprune.edits`; run `memprune fetch-groundtruth`,
python -m benchmarks.no_such_tool, and docs/results.md's benchmarks/weight_group_ablation.py."""
'''
    found = problems({"workflow/memprune/x.py": stale, "docs/x.md": "[the results](results.md#no-such-heading)"})
    assert sorted(found) == sorted([
        "docs/x.md:1: (results.md#no-such-heading) (no such file, or no such heading in it)",
        "workflow/memprune/x.py:1: workflow/memprune/attacks/adversarial.py (no such file or folder)",
        "workflow/memprune/x.py:1: tests/test_finetune_testbed.py (no such file or folder)",
        "workflow/memprune/x.py:2: memprune.localize.wanda_packed.scores_packed (no such module, or no such name "
        "in it, under workflow/memprune)",
        "workflow/memprune/x.py:2: memprune.edits (no such module, or no such name in it, under workflow/memprune)",
        "workflow/memprune/x.py:2: `memprune fetch-groundtruth` (no such subcommand; see `memprune --help`)",
        "workflow/memprune/x.py:3: benchmarks/no_such_tool.py (no such file or folder)",
        "workflow/memprune/x.py:3: benchmarks/weight_group_ablation.py (no such file or folder)",
    ])
    fine = '''"""mitigate/adversarial.py, workflow/memprune/mitigate/ (tests/test_planted.py), `memprune plant`,
memprune.localize.wanda_packed.memorized_masks_packed, memprune.plan.lay_out_clone, [x](studies.md#nemo),
[y](../../shared/METHODS.md).
Outputs and templates: results/x.nc, benchmarks/testbed/train.tsv, benchmarks/<model>/, config/X.yaml,
rules/{name}.smk, docs/*.md, experiments/..., ../shared/config/METHODS.md, python -m benchmarks.X."""
'''
    assert problems({"docs/fine.md": fine}) == []
