"""Faults: a real SIGKILL while an output is being written (the process alive, its temporary on disk) leaves
nothing a rerun or reader would accept, and the rerun gives byte-identical results; Snakemake's lock refuses a
second invocation on the same directory. Every test here starts processes: the slow tier."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from conftest import (REPO, WORKFLOW_COLLECTIONS, WORKFLOW_SETS, kill_at_write, kill_while_running,
                      temporaries_under, write_config)

pytestmark = pytest.mark.slow

MEM = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:6]


def _cmd(wd: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(wd),
            "--configfile", str(wd / "config.yaml"), "--cores", "2", *args]


def _setup(wd: Path, model: Path) -> None:
    write_config(wd, model, {"mem": MEM}, {"m": {"set": "mem", "n_subsets": 2, "size": 3, "seed": 1}},
                 sampling={"steps": 4, "guidance": 3.0, "batch_size": 4, "seed": 0})


def _run(wd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(wd, *args), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _kill_while_writing(wd: Path, not_before: float) -> list[Path]:
    """Start the DAG and SIGKILL Snakemake and every job it started the moment a job has a temporary output on
    disk, `not_before` seconds after the start at the earliest; the temporaries left by the kill."""
    # --rerun-incomplete (set in the shipped profiles): a job whose output was renamed into place just before
    # Snakemake itself was killed is flagged incomplete in Snakemake's metadata; it is run again.
    return kill_at_write(_cmd(wd, "results/iou.nc", "--rerun-incomplete"), lambda: temporaries_under(wd / "results"),
                         not_before=not_before, group=True)


def _temporary(path: Path, results: Path) -> bool:
    """A temporary sibling or inside one (`.<name>.tmp-*`): never an output's name, so no reader takes it."""
    return any(part.startswith(".") for part in path.relative_to(results).parts)


def _digest_outputs(path: Path) -> str:
    """The bytes and names of every file under `path` but the temporaries a kill leaves behind."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not _temporary(p, path):
            h.update(p.relative_to(path).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _accepted_outputs(wd: Path) -> list[Path]:
    """Every zarr store or netCDF under results/ must open completely."""
    results = wd / "results"
    found = []
    def temporary(path: Path) -> bool:
        return _temporary(path, results)

    for store in results.rglob("*.zarr"):
        if temporary(store):
            continue
        xr.open_zarr(store).load()
        found.append(store)
    for nc in results.rglob("*.nc"):
        if temporary(nc):
            continue
        xr.open_dataset(nc, engine="h5netcdf").load()
        found.append(nc)
    return found


def test_sigkill_while_writing_at_several_points_then_rerun_is_byte_identical(tiny_model, workflow_run, tmp_path):
    """The shared workflow run's config, run again from scratch in another directory and SIGKILLed three times,
    each while a job writes an output (Snakemake alive, the temporary on disk): what is left always opens, the
    rerun leaves no temporary, and its masks and iou.nc are byte-identical to the uninterrupted run's."""
    wd = tmp_path / "killed"
    wd.mkdir()
    write_config(wd, tiny_model, WORKFLOW_SETS, WORKFLOW_COLLECTIONS)
    left = []
    for not_before in (4.0, 9.0, 14.0):
        for _ in range(3):  # a kill can land just after a short write finished: then kill at the next one
            caught = _kill_while_writing(wd, not_before)
            assert all(_temporary(p, wd / "results") for p in caught)
            _accepted_outputs(wd)  # whatever exists is complete
            _run(wd, "--unlock")
            if caught:
                left += caught
                break
        else:
            raise AssertionError("three kills in a row came after the write they saw had finished")
    assert len(left) >= 3
    _run(wd, "results/iou.nc", "--rerun-incomplete")
    assert temporaries_under(wd / "results") == []  # each rewritten output's rerun removed the killed job's temporary
    assert _digest_outputs(wd / "results/tiny/masks") == _digest_outputs(workflow_run / "results/tiny/masks")
    xr.testing.assert_identical(xr.open_dataset(wd / "results/tiny/iou.nc", engine="h5netcdf").load(),
                                xr.open_dataset(workflow_run / "results/tiny/iou.nc", engine="h5netcdf").load())


def test_killed_capture_leaves_no_store_and_reruns(tiny_model, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(8)))
    out = tmp_path / "chunk.zarr"
    cmd = [sys.executable, "-m", "memprune", "capture", "--model", str(tiny_model), "--prompts-file", str(prompts),
           "--steps", "4", "--guidance", "3", "--device", "cpu", "--out", str(out)]
    left = kill_while_running(cmd, out)  # alive, writing its store: the temporary on disk, the store not yet
    assert all(p.name.startswith(".chunk.zarr.tmp-") for p in left)
    subprocess.run(cmd, check=True, capture_output=True)
    assert xr.open_zarr(out).load().sizes["prompt"] == 8
    assert not any(p.exists() for p in left)  # the rerun removed what the killed writer left


def test_second_snakemake_on_the_same_directory_is_refused(tiny_model, tmp_path):
    _setup(tmp_path, tiny_model)
    first = subprocess.Popen(_cmd(tmp_path, "results/iou.nc"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        lock_dir = tmp_path / ".snakemake" / "locks"
        for _ in range(100):
            if lock_dir.exists() and any(lock_dir.iterdir()):
                break
            time.sleep(0.1)
        second = subprocess.run(_cmd(tmp_path, "results/iou.nc"), capture_output=True, text=True)
        assert second.returncode != 0
        assert "lock" in (second.stdout + second.stderr).lower()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.parametrize("command,group", [("plant", "planted"), ("finetune-testbed", "finetuned")])
def test_killed_save_of_a_derived_testbed_leaves_no_model_and_reruns(tiny_model, tmp_path, command, group):
    import json
    import shutil

    from memprune.testbed.dataset import TRAIN_RECORD_NAME, DatasetSpec, dataset_digest, generate_dataset
    from memprune.testbed.derived import AddedSpec, extend_dataset

    base_data = tmp_path / "data"
    generate_dataset(DatasetSpec(seed=1, n_duplicated=2, duplication=2, n_single=2, renders_per_scene=1), base_data)
    data = tmp_path / "extended"
    extend_dataset(base_data, AddedSpec(group, k=2, duplication=2), data)
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    (base / TRAIN_RECORD_NAME).write_text(json.dumps({"dataset_sha256": dataset_digest(base_data)}))
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "memprune", command, "--model", str(base), "--data", str(data), "--out", str(out),
           "--no-progress"]
    short = {"steps": 2, "batch_size": 4} if command == "plant" else {"epochs": 0.1, "batch_size": 4}
    spec = ["--spec", json.dumps({**short, "threads": 1})]
    kill_while_running(cmd + spec, out)  # killed while saving the trained model: no model
    subprocess.run(cmd + spec, check=True, capture_output=True)
    from memprune.models import load_pipeline

    load_pipeline(out, "cpu", "float32")
