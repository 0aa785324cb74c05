"""One source for the SLURM profiles: workflow/profiles/slurm-cpu/config.yaml is exactly what `memprune profiles`
writes from workflow/profiles/slurm/config.yaml, so a rule, resource or setting added to the GPU profile reaches the
CPU profile by rerunning the command, never by a second edit; the commands docs/cluster.md shows for it work as
written. (tests/test_gpu_requests.py checks what the CPU profile asks; tests/test_readme.py dry-runs its command.)"""

import re
import shlex
import shutil

import yaml

from conftest import REPO
from memprune.profiles import render

PROFILES = REPO / "workflow" / "profiles"


def test_the_cpu_profile_is_what_memprune_profiles_writes():
    committed = (PROFILES / "slurm-cpu" / "config.yaml").read_text()
    assert committed == render((PROFILES / "slurm" / "config.yaml").read_text()), (
        "workflow/profiles/slurm-cpu/config.yaml is not what `memprune profiles` writes from "
        "workflow/profiles/slurm/config.yaml: run `memprune profiles` from the repository's root")


def test_the_gpu_model_is_named_in_the_gpu_profile_only():
    gpu = yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())
    text = (PROFILES / "slurm-cpu" / "config.yaml").read_text()
    cpu = yaml.safe_load(text)
    assert all(res["gpu"] == 0 and "gpu_model" not in res for res in cpu["set-resources"].values())
    models = {res["gpu_model"] for res in gpu["set-resources"].values() if "gpu_model" in res}
    assert models and not [m for m in models if re.search(rf"\b{re.escape(m)}\b", text)], models


def _docs_commands() -> list[str]:
    """docs/cluster.md's `memprune profiles` lines."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "docs" / "cluster.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("memprune profiles")]


def _memprune(line: str, capsys) -> tuple[int, str]:
    """The command run as `memprune` runs it (in this process), with its exit status and what it printed."""
    from memprune.cli import main

    capsys.readouterr()
    rc = main(shlex.split(line, comments=True)[1:])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_the_docs_commands_write_and_check_and_an_edit_reaches_the_cpu_profile(tmp_path, monkeypatch, capsys):
    """The docs' commands from a repository root holding only the GPU profile: the first writes the CPU profile, the
    second passes; a rule, a resource and a setting added to the GPU profile fail the check until it is rerun, then
    reach the CPU profile with the GPU requests dropped."""
    write, check = _docs_commands()
    assert shlex.split(write, comments=True) == ["memprune", "profiles"]
    assert shlex.split(check, comments=True) == ["memprune", "profiles", "--check"]
    gpu_path, cpu_path = tmp_path / "workflow/profiles/slurm/config.yaml", tmp_path / "workflow/profiles/slurm-cpu"
    shutil.copytree(PROFILES / "slurm", gpu_path.parent)
    monkeypatch.chdir(tmp_path)
    assert _memprune(check, capsys)[0] == 2  # nothing written yet
    rc, out = _memprune(write, capsys)
    assert rc == 0, out
    assert (cpu_path / "config.yaml").read_text() == (PROFILES / "slurm-cpu" / "config.yaml").read_text()
    assert _memprune(check, capsys) == (0, "workflow/profiles/slurm-cpu/config.yaml: up to date\n")

    gpu = yaml.safe_load(gpu_path.read_text())
    gpu["set-resources"]["new_rule"] = {"gpu": 1, "gpu_model": "h100", "gres": "gpu:h100:1", "mem_mb": 40000,
                                        "runtime": 90, "cpus_per_task": 8, "slurm_extra": "--exclusive"}
    gpu["default-resources"]["slurm_partition"] = "main"
    gpu["keep-going"] = True
    gpu_path.write_text(yaml.safe_dump(gpu, sort_keys=False))
    rc, out = _memprune(check, capsys)
    assert rc == 2 and "is not what `memprune profiles` writes" in out, out
    assert _memprune(write, capsys)[0] == 0
    cpu = yaml.safe_load((cpu_path / "config.yaml").read_text())
    assert cpu["set-resources"]["new_rule"] == {"gpu": 0, "mem_mb": 5000, "runtime": 90, "cpus_per_task": 1,
                                                "slurm_extra": "--exclusive"}
    assert cpu["default-resources"]["slurm_partition"] == "main" and cpu["keep-going"] is True
    assert cpu["set-resources"]["capture_chunk"] == {"gpu": 0, "mem_mb": 2000, "runtime": 15, "cpus_per_task": 1}
