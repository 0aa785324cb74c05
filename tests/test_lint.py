"""CI lints before it tests: `.ci/run` runs `ruff check .` (pyproject.toml's [tool.ruff]) and `snakemake --lint`
through .ci/snakemake_lint.py before pytest, and that script fails on every lint but the deliberate ones it lists.
Nothing here starts a subprocess: CI runs the linters themselves."""

import importlib.util

import pytest

from conftest import REPO


def ci_lines() -> list[str]:
    return [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def snakemake_lint():
    spec = importlib.util.spec_from_file_location("snakemake_lint", REPO / ".ci/snakemake_lint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_lints_after_installing_and_before_the_tests():
    lines = ci_lines()
    tests = len(lines) - 1
    assert "python -m pytest" in lines[tests]
    install = lines.index('pip install -e ".[test]"')  # ruff comes with the [test] extra
    ruff = lines.index("ruff check .")
    snakemake = lines.index("python .ci/snakemake_lint.py")
    assert install < ruff < tests and install < snakemake < tests
    assert "set -euo pipefail" in lines  # a failing lint step stops CI


def test_ruff_is_configured_and_installed_with_the_tests():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    ruff = pyproject["tool"]["ruff"]
    assert ruff["line-length"] == 120 and ruff["target-version"] == "py310"
    assert {"E", "F", "W"} <= set(ruff["lint"]["select"])
    assert any(r.startswith("ruff") for r in pyproject["project"]["optional-dependencies"]["test"])


# `snakemake --lint`'s text (Snakemake 9.27) on this workflow before latest_analysis had its conda environment.
LINT_TEXT = """\
Lints for snakefile /work/main/Snakefile:
    * Environment variable PYTHONPATH used but not asserted with envvars directive in line 24.:
      Asserting existence of environment variables with the envvars directive
      ensures proper error messages if the user fails to invoke a workflow with
      all required environment variables defined.

Lints for rule latest_analysis (line 35, /work/main/rules/analysis.smk):
    * Specify a conda environment or container for each rule.:
      This way, the used software for each specific step is documented, and the
      workflow can be executed on any machine without prerequisites.
"""


def test_snakemake_lints_are_read_and_only_the_deliberate_ones_pass():
    lint = snakemake_lint()
    assert lint.lints(LINT_TEXT) == [
        ("snakefile Snakefile", "Environment variable PYTHONPATH used but not asserted with envvars directive"),
        ("rule latest_analysis", "Specify a conda environment or container for each rule."),
    ]
    assert lint.unexpected(LINT_TEXT) == [
        ("rule latest_analysis", "Specify a conda environment or container for each rule.")]
    assert lint.unexpected("Congratulations, your workflow is in a good condition!\n") == []


def test_each_accepted_lint_names_what_still_exists():
    """An accepted lint whose rule or variable is gone is stale: remove it from ACCEPTED."""
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    for where, title in snakemake_lint().ACCEPTED:
        kind, name = where.split(" ", 1)
        if kind == "rule":
            assert f"rule {name}:" in rules, where
        else:
            assert (REPO / name).is_file(), where
            variable = title.split("Environment variable ", 1)[-1].split(" ", 1)[0]
            assert f'os.environ["{variable}"]' in (REPO / name).read_text(), (where, title)
