"""The two dependency lists stay in step: pyproject.toml's `project.dependencies` (pip install) and the jobs'
environment envs/memprune.yaml (`snakemake --sdm conda`) name the same packages, with the same version bounds
where both give one. The only difference allowed is `PLAN_ONLY`: what the Snakemake process needs to plan and
no job imports."""

import re

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

# Snakemake itself and the config's schema check (memprune.plan.schema) run where Snakemake runs; a job is
# `python -m memprune <step>` in envs/memprune.yaml and imports neither (tests/test_layout.py: the package never
# imports snakemake).
PLAN_ONLY = {"snakemake", "jsonschema"}
CONDA_TOOLING = {"python", "pip"}  # the environment's interpreter and installer, not memprune's dependencies


def pyproject_requirements(path=REPO / "pyproject.toml") -> dict[str, str]:
    """{normalized name: version specifier ('' when none)} of `project.dependencies`."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads(path.read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): str(r.specifier) for r in map(Requirement, deps)}


def env_requirements(path=REPO / "envs/memprune.yaml") -> dict[str, str]:
    """{normalized name: version specifier} of the conda environment: its pip list, and its conda packages but the
    interpreter and pip."""
    out = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(entry, dict):
            out.update({canonicalize_name(r.name): str(r.specifier) for r in map(Requirement, entry.get("pip", []))})
            continue
        name, spec = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", str(entry)).groups()
        if canonicalize_name(name) not in CONDA_TOOLING:
            out[canonicalize_name(name)] = spec.strip()
    return out


def differences(pyproject: dict[str, str], env: dict[str, str]) -> list[str]:
    """What keeps the two lists out of step, each a sentence naming the package and the file to edit."""
    out = [f"{n}: in pyproject.toml, add it to envs/memprune.yaml"
           for n in sorted(set(pyproject) - set(env) - PLAN_ONLY)]
    out += [f"{n}: in envs/memprune.yaml, add it to pyproject.toml" for n in sorted(set(env) - set(pyproject))]
    out += [f"{n}: only the plan needs it, list it in pyproject.toml alone" for n in sorted(PLAN_ONLY & set(env))]
    out += [f"{n}: PLAN_ONLY names it, pyproject.toml lacks it" for n in sorted(PLAN_ONLY - set(pyproject))]
    out += [f"{n}: pyproject.toml says {pyproject[n]!r}, envs/memprune.yaml {env[n]!r}"
            for n in sorted(set(pyproject) & set(env)) if pyproject[n] and env[n] and pyproject[n] != env[n]]
    return out


def test_pyproject_and_the_jobs_environment_list_the_same_dependencies():
    pyproject, env = pyproject_requirements(), env_requirements()
    assert len(env) > 15 and "accelerate" in pyproject  # the parsers see the lists
    assert differences(pyproject, env) == []


@pytest.mark.parametrize("edit,message", [
    (lambda p, e: p.update(accelerate=">=0.31") or e.pop("accelerate"), "accelerate: in pyproject.toml"),
    (lambda p, e: e.update(scipy=">=1.10"), "scipy: in envs/memprune.yaml"),
    (lambda p, e: e.update(diffusers=">=0.31"), "diffusers: pyproject.toml says '>=0.30'"),
    (lambda p, e: e.update(snakemake=">=9"), "snakemake: only the plan needs it"),
])
def test_a_package_added_to_one_list_only_is_named(edit, message):
    pyproject, env = pyproject_requirements(), env_requirements()
    edit(pyproject, env)
    assert any(d.startswith(message) for d in differences(pyproject, env)), differences(pyproject, env)
