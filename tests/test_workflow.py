"""End-to-end DAG runs on a tiny random model in a temporary directory."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import REPO, WORKFLOW_COLLECTIONS as COLLECTIONS, WORKFLOW_SETS, snakemake, write_config

MEM, CTRL = WORKFLOW_SETS["mem"], WORKFLOW_SETS["ctrl"]
pytestmark = pytest.mark.slow  # every test here runs Snakemake


def planned_jobs(proc) -> dict[str, int]:
    """Job counts per rule from a dry run's table."""
    counts = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def digest_tree(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_end_to_end_outputs(workflow_run):
    wd = workflow_run
    iou = xr.open_dataset(wd / "results/tiny/iou.nc", engine="h5netcdf")
    dens = xr.open_dataset(wd / "results/tiny/density.nc", engine="h5netcdf")
    for name in ("iou.nc", "density.nc"):  # the headline targets: copies of the loaded config's model's
        assert (wd / "results" / name).read_bytes() == (wd / "results/tiny" / name).read_bytes()
    assert list(iou.collection.values) == ["m5", "c4"]
    assert iou.control.values.tolist() == [False, True]
    assert iou.sizes["layer"] == 7 and iou.sizes["step"] == 6
    assert list(iou.localizer.values) == ["wanda"]
    m = iou.iou.sel(localizer="wanda", collection="m5", mask_type="found")
    assert np.allclose(m.values, np.swapaxes(m.values, 0, 1))
    assert np.all(m.sel(subset_i=0, subset_j=0).values == 1.0)
    assert np.all(np.isnan(iou.iou.sel(collection="c4", subset_i=2).values))  # 2 subsets only: padded
    assert float(dens.density.max()) <= 0.05 + 1e-9
    assert (wd / "results/tiny/figures/iou.png").stat().st_size > 1000
    store = xr.open_zarr(wd / "results/tiny/activations/seed0_steps6_g3.0_paper/subsets/m5/0.zarr")
    assert store.sizes["prompt"] == 5 and store.sizes["step"] == 6 and list(store.branch.values) == ["cond"]
    # zarr v3 with dimension names
    meta = (wd / "results/tiny/activations/seed0_steps6_g3.0_paper/null.zarr/zarr.json").read_text()
    assert '"zarr_format": 3' in meta
    null_store = wd / "results/tiny/activations/seed0_steps6_g3.0_paper/null.zarr"
    layer_meta = next(null_store.glob("down_blocks*/zarr.json")).read_text()
    assert '"dimension_names"' in layer_meta


def test_dag_cost_sums_the_benchmark_records_of_the_targets_jobs(workflow_run, monkeypatch, capsys):
    import pandas as pd

    from benchmarks import dag_cost

    monkeypatch.chdir(workflow_run)
    run = f"results/iou.nc -s {REPO / 'Snakefile'} --configfile config.yaml"
    jobs = dag_cost.dag_jobs(run.split())
    files = [b for _, b in jobs if b]
    assert {r for r, _ in jobs} >= {"capture_chunk", "gather_subsets", "masks", "analysis"}
    assert all(Path(b).exists() for b in files) and len(files) == len(jobs) - 1  # all but latest_analysis (a copy)
    monkeypatch.setattr("sys.argv", ["dag_cost", "--cores", "2", "--run", run])
    dag_cost.main()
    out = capsys.readouterr().out
    total = re.search(r"^total\s+(\d+)\s+(\d+)\s+\d+\s+(\d+)", out, flags=re.M)
    assert total and int(total.group(1)) == len(jobs) and int(total.group(2)) == len(files)
    cpu = sum(float(pd.read_csv(b, sep="\t")["cpu_time"].iloc[-1]) for b in files)
    assert abs(int(total.group(3)) - cpu) <= 1
    assert "without a benchmark record" in out and "latest_analysis 1" in out


def test_second_run_does_nothing(workflow_run):
    proc = snakemake(workflow_run, "-n", "results/iou.nc")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_another_model_in_the_same_directory_keeps_the_first_models_results(workflow_run):
    """A config of another model plans its own results/<model>/ outputs and replaces only the headline copies."""
    wd = workflow_run
    import yaml

    before = (wd / "results/tiny/iou.nc").stat().st_mtime_ns
    original = (wd / "config.yaml").read_text()
    cfg = yaml.safe_load(original)
    cfg["model"]["name"] = "tiny_other"
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        proc = snakemake(wd, "-n", "results/iou.nc")
    finally:
        (wd / "config.yaml").write_text(original)  # restore
    jobs = planned_jobs(proc)
    assert jobs["analysis"] == 1 and jobs["latest_analysis"] == 1 and jobs["capture_null"] == 1
    assert "results/tiny_other/iou.nc" in proc.stdout and "results/tiny/" not in proc.stdout
    assert (wd / "results/tiny/iou.nc").stat().st_mtime_ns == before
    assert "Nothing to be done" in snakemake(wd, "-n", "results/iou.nc").stdout  # back: the copies are current


def test_new_collection_of_seen_prompts_schedules_no_sampling(workflow_run):
    wd = workflow_run
    cols = {**COLLECTIONS, "m3": {"set": "mem", "n_subsets": 4, "size": 3, "seed": 7}}
    write_config(wd, _model(wd), {"mem": MEM, "ctrl": CTRL}, cols)
    jobs = planned_jobs(snakemake(wd, "-n", "results/iou.nc"))
    assert "capture_chunk" not in jobs and "capture_null" not in jobs
    assert jobs["gather_subsets"] == 1 and jobs["masks"] == 1 and jobs["analysis"] == 1  # one job per new collection
    # a new prompt set does need sampling: one chunk job per 4 prompts
    write_config(wd, _model(wd), {"mem": MEM, "ctrl": CTRL, "more": ["new prompt one", "new prompt two"]},
                 {**COLLECTIONS, "x": {"set": "more", "n_subsets": 1, "size": 2}})
    jobs = planned_jobs(snakemake(wd, "-n", "results/iou.nc"))
    assert jobs["capture_chunk"] == 1
    write_config(wd, _model(wd), {"mem": MEM, "ctrl": CTRL}, COLLECTIONS)  # restore


def _model(wd: Path) -> Path:
    import yaml

    return Path(yaml.safe_load((wd / "config.yaml").read_text())["model"]["path"])


def test_nan_activations_stop_masks_and_leave_nothing(workflow_run, tmp_path):
    from memprune.cli import main
    from memprune.formats.store import open_zarr, write_zarr

    wd = workflow_run
    src = wd / "results/tiny/activations/seed0_steps6_g3.0_paper/subsets/m5/0.zarr"
    ds = open_zarr(src)
    layer = ds.attrs["layers"][2]
    values = ds[layer].values.copy()
    values[0, 1, 0, 3] = np.nan
    (tmp_path / "subsets").mkdir()
    write_zarr(ds.assign({layer: (ds[layer].dims, values)}), tmp_path / "subsets" / "0.zarr")
    out = tmp_path / "masks"
    rc = main(["locate", "--model", str(_model(wd)), "--method", "wanda", "--params", '{"sparsity": 0.05, "tau": 3}',
               "--collection", "m5", "--n-subsets", "1", "--subsets", str(tmp_path / "subsets"),
               "--null", str(wd / "results/tiny/activations/seed0_steps6_g3.0_paper/null.zarr"), "--out", str(out)])
    assert rc == 2
    assert not out.exists() and not list(tmp_path.glob(".masks.tmp-*"))


def test_stores_open_without_warnings(workflow_run):
    """Every zarr store of the run opens with plain xr.open_zarr, with no warning (consolidated metadata; the
    .snakemake_timestamp Snakemake puts in directory outputs is not listed)."""
    import warnings

    stores = list((workflow_run / "results").rglob("*.zarr"))
    assert len(stores) > 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for store in stores:
            xr.open_zarr(store)


def test_each_log_line_appears_once(workflow_run):
    log = next((workflow_run / "logs/tiny/masks").rglob("*.log")).read_text().splitlines()
    lines = [l for l in log if " memprune." in l]
    assert lines and len(lines) == len(set(lines))


def test_profile_dry_run_lists_gpu_jobs_for_sd15():
    """The SLURM profile plans SD1.5's jobs with their resources (no SLURM or weights needed)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "results/iou.nc", "-n", "--profile", "workflow/profiles/slurm",
         "--configfile", "config/sd15.yaml"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc)
    # 500 memorized prompts / 8 per chunk = 63 chunks, plus the chunks of sd1_nmem.txt the control draws from
    assert 63 < jobs["capture_chunk"] <= 126 and jobs["capture_null"] == 1
    assert jobs["masks"] == 24 and jobs["analysis"] == 1  # 6 localizers x 4 collections; the testbed's do not leak in
    blocks = proc.stdout.split("\n\n")
    capture = next(b for b in blocks if "rule capture_chunk" in b or "capture_chunk" in b and "resources" in b)
    masks = next(b for b in blocks if "rule masks:" in b)
    assert "gpu=1" in capture and "gpu_model=a100" in capture
    assert "gpu=" not in masks and "mem_mb=24000" in masks


@pytest.mark.slow
def test_v_prediction_pipeline_runs_the_dag_offline(tmp_path):
    """SD2 is v-prediction: a tiny v-prediction pipeline saved with save_pretrained runs the same DAG
    (HF_HUB_OFFLINE=1 is set by the snakemake() helper); timesteps come from its scheduler."""
    from conftest import BPE, tiny_spec
    from memprune.testbed.model import save_untrained_pipeline

    model = save_untrained_pipeline(tmp_path / "vpred", BPE, tiny_spec(), seed=3, prediction_type="v_prediction")
    wd = tmp_path / "wd"
    wd.mkdir()
    import yaml

    path = write_config(wd, model, {"mem": MEM[:6]}, {"m": {"set": "mem", "n_subsets": 2, "size": 3, "seed": 0}})
    cfg = yaml.safe_load(path.read_text())
    cfg["model"].update(name="vpred", scheduler="EulerDiscreteScheduler")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(wd, "results/iou.nc")
    act = xr.open_zarr(wd / "results/vpred/activations/seed0_steps6_g3.0_paper/null.zarr")
    assert act.sizes["step"] == 6 and np.all(np.diff(act["t"].values) < 0)  # Euler's own descending timesteps
    iou = xr.open_dataset(wd / "results/iou.nc", engine="h5netcdf")
    assert float(iou.mean_iou.sel(localizer="wanda", collection="m", mask_type="found").mean()) > 0


def test_profile_dry_run_plans_evaluation_attack_and_detection_for_sd15():
    """The later stages on SD1.5 plan with GPU resources on sampling jobs and none on pruning."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "results/sd15/eval.nc", "results/sd15/attack/table.csv",
         "results/sd15/detection.nc", "-n", "--profile", "workflow/profiles/slurm", "--configfile", "config/sd15.yaml"],
        cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc)
    # unedited, 10 wanda + 10 NeMo + 1 random + 1 random_nemo pruned, Wen, Ren, Jain, adversarial (22 prune jobs)
    assert jobs["eval_sample"] == 27 and jobs["prune"] == 22 and jobs["eval_aggregate"] == 1
    assert jobs["attack_generate"] == 6 * 63  # unedited, wanda, NeMo, Ren, Jain, adversarial; 500 prompts / 8 per chunk
    blocks = proc.stdout.split("\n\n")
    for rule in ("eval_sample", "attack_generate", "detection_scores"):
        block = next(b for b in blocks if f"rule {rule}:" in b)
        assert "gpu=1" in block, rule
    assert "gpu=" not in next(b for b in blocks if "rule prune:" in b)


def test_sd2_config_plans():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "snakemake", "results/iou.nc", "-n", "--configfile",
                           "config/sd2.yaml"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert planned_jobs(proc)["masks"] > 0
