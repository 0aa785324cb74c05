"""`memprune check` (memprune.plan.preflight): the inputs from outside the workflow that a config's stages read,
each OK, MISSING or BUILT with its fix, and the same check run by Snakemake before a run's first job.

The fast tests run the command in-process in a clone of the checkout without data/ or models/, with an empty
Hugging Face cache; the two Snakemake runs are slow. Costs (2 shared CPU cores, measured): the fast tests ~10 s
in all (building the SD plans), the slow ones ~25 s.
"""

import json
import re
import shlex

import pytest
import yaml

from conftest import REPO
from memprune.cli import main
from memprune.evaluate.metrics import CLIP_HUB
from memprune.plan import lay_out_clone, preflight
from memprune.plan.config import Plan
from memprune.plan.preflight import BUILT, MISSING, OK, STAGES, Preflight, read_configs
from test_readme import bash_blocks

CLUSTER = REPO / "docs/cluster.md"
SD = ["config/sd15.yaml", "config/sd2.yaml"]
# every shipped config that downloads nothing (its files ship, or a rule makes them), as it is run
SELF_CONTAINED = [[], ["config/sd15_random.yaml"], ["config/testbed.yaml"], ["config/testbed_closed_loop.yaml"],
                  ["config/testbed_finetune.yaml"], ["config/testbed_finetune.yaml", "config/finetune/e16.yaml"],
                  ["config/testbed_finetune.yaml", "config/finetune/e32.yaml"]]
# an SD pipeline's model_index.json (what `memprune check` reads of it): the safety checker is never loaded
SD_INDEX = {"_class_name": "StableDiffusionPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A checkout without data/ or models/ as the working directory, and an empty Hugging Face cache, offline."""
    from huggingface_hub import constants

    wd = tmp_path / "clone"
    lay_out_clone(REPO, wd)
    monkeypatch.chdir(wd)
    monkeypatch.setattr(preflight, "REPO", wd)
    (tmp_path / "hf").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return wd


def check(capsys, argv) -> tuple[int, str, dict[str, dict]]:
    """`memprune <argv>` in-process: its exit status, stdout and entries {key: {status, value, fix}}."""
    rc = main(list(argv))
    out = capsys.readouterr().out
    entries, key = {}, None
    for line in out.splitlines():
        if m := re.match(r"^(OK|MISSING|BUILT)\s+(\S+): (.*)$", line):
            key = m.group(2)
            entries[key] = {"status": m.group(1), "value": m.group(3), "fix": ""}
        elif key and (m := re.match(r"^\s+(?:fix: |     )(.*)$", line)) and (entries[key]["fix"] or "fix: " in line):
            entries[key]["fix"] += m.group(1) + "\n"
    return rc, out, entries


def expected_files(config: dict) -> dict[str, str]:
    """{key: value} of the external files an SD config names."""
    ev = config["evaluate"]
    return {"model.path": config["model"]["path"], "evaluate.sscd": ev["sscd"],
            "evaluate.clip.weights": ev["clip"]["weights"],
            "evaluate.ground_truth": ev["ground_truth"],
            **{f"recovery.images.{s}": r for s, r in config["recovery"]["images"].items()}}


def stand_in_pipeline(folder):
    """A directory with an SD pipeline's layout (empty weight files): what `memprune check` looks for."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(SD_INDEX))
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        (folder / name).mkdir()
    for name, weights in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                          ("text_encoder", "model")):
        (folder / name / "config.json").write_text("{}")
        (folder / name / f"{weights}.safetensors").touch()
    return folder


def stand_ins(entries: dict[str, dict], hf_cache=None) -> None:
    """A stand-in at the place of every missing entry: the pipeline (a directory, or a hub id's snapshot in the
    cache), an empty file, or an image directory <root>/0/0.png."""
    from pathlib import Path

    for key, e in entries.items():
        if e["status"] != MISSING:
            continue
        if key == "model.path" and not e["value"].startswith("/"):  # a hub id: its snapshot in the cache
            repo = Path(hf_cache) / f"models--{e['value'].replace('/', '--')}"
            (repo / "refs").mkdir(parents=True)
            (repo / "refs/main").write_text("0" * 40)
            stand_in_pipeline(repo / "snapshots" / ("0" * 40))
        elif key == "model.path":
            stand_in_pipeline(Path(e["value"]))
        elif key.startswith(("recovery.images", "evaluate.ground_truth")):
            (Path(e["value"]) / "0").mkdir(parents=True, exist_ok=True)
            (Path(e["value"]) / "0/0.png").touch()
        else:
            Path(e["value"]).parent.mkdir(parents=True, exist_ok=True)
            Path(e["value"]).touch()


@pytest.mark.parametrize("configfile", SD)
def test_sd_config_without_its_files_names_each_with_its_key_and_fix(clone, capsys, configfile):
    config = yaml.safe_load((REPO / configfile).read_text())
    rc, out, entries = check(capsys, ["check", "--configfile", configfile])
    assert rc == 2, out
    files = expected_files(config)
    assert {k: (e["status"], e["value"]) for k, e in entries.items()} == {k: (MISSING, v) for k, v in files.items()}
    fixes = {k: e["fix"] for k, e in entries.items()}
    assert fixes["model.path"].startswith(f"HF_HUB_OFFLINE=0 hf download {config['model']['path']} --include ")
    assert f"curl -L -o {files['evaluate.sscd']} https://" in fixes["evaluate.sscd"]
    clip = config["evaluate"]["clip"]
    assert fixes["evaluate.clip.weights"].startswith(f"hf download {CLIP_HUB[clip['name']][1]} "
                                                     "open_clip_model.safetensors")
    assert fixes["evaluate.clip.weights"].rstrip().endswith(clip["weights"])
    for pset, root in config["recovery"]["images"].items():
        assert (f"fetch-training-images --prompts {config['prompt_sets'][pset]} --root {root} "
                in fixes[f"recovery.images.{pset}"])
    assert out.rstrip().endswith(f"{len(files)} of {len(files)} external inputs missing")
    # a target needs only its stages' files: the masks and IOU the weights alone
    rc, out, entries = check(capsys, ["check", "results/iou.nc", "--configfile", configfile])
    assert rc == 2 and list(entries) == ["model.path"] and "(stages: localize)" in out


@pytest.mark.parametrize("configfile", SD)
def test_sd_config_passes_once_every_file_is_there(clone, capsys, tmp_path, configfile):
    """Stand-ins where the check says each missing file goes (the hub id's pipeline in the Hugging Face cache)."""
    _, _, entries = check(capsys, ["check", "--configfile", configfile])
    stand_ins(entries, tmp_path / "hf")
    rc, out, entries = check(capsys, ["check", "--configfile", configfile])
    assert rc == 0, out
    assert {e["status"] for e in entries.values()} == {OK} and out.rstrip().endswith(f"all {len(entries)} external "
                                                                                     "inputs present")


def test_an_incomplete_pipeline_is_missing_naming_what_it_lacks(clone, capsys, tmp_path):
    stand_in_pipeline(tmp_path / "sd15")
    (tmp_path / "sd15/unet/diffusion_pytorch_model.safetensors").unlink()
    (tmp_path / "sd15/unet/diffusion_pytorch_model.fp16.safetensors").touch()  # diffusers loads no variant unasked
    (tmp_path / "overlay.yaml").write_text(f"model: {{path: {tmp_path / 'sd15'}}}\n")
    rc, out, entries = check(capsys, ["check", "results/iou.nc", "--configfile", "config/sd15.yaml",
                                      str(tmp_path / "overlay.yaml")])
    hub_id = yaml.safe_load((REPO / "config/sd15.yaml").read_text())["model"]["path"]
    assert rc == 2 and entries["model.path"]["status"] == MISSING
    assert "no unet/diffusion_pytorch_model.safetensors or model.safetensors" in out
    assert entries["model.path"]["fix"].startswith(f"hf download {hub_id} ")
    assert f"--local-dir {tmp_path / 'sd15'}" in out


@pytest.mark.parametrize("configs", SELF_CONTAINED, ids=lambda c: "+".join(c) or "config.yaml")
def test_configs_that_download_nothing_pass(clone, capsys, configs):
    rc, out, entries = check(capsys, ["check", *(["--configfile", *configs] if configs else [])])
    assert rc == 0, out
    assert entries["model.path"]["status"] in (OK, BUILT) and MISSING not in {e["status"] for e in entries.values()}
    if configs == ["config/sd15_random.yaml"]:  # its model and training images are made by rules of the DAG
        assert {k for k, e in entries.items() if e["status"] == BUILT} >= {"model.path", "recovery.images.memorized"}


def test_targets_map_to_the_stages_that_build_them():
    config, _ = read_configs(["config/sd15.yaml"], REPO)
    pre = Preflight(Plan(config, REPO))
    r = pre.plan.results
    assert pre.stages(["results/iou.nc"]) == pre.stages(["all"]) == pre.stages([f"{r}/masks/wanda"]) == ["localize"]
    assert pre.stages([f"{r}/detection.nc"]) == ["detection"]
    assert pre.stages([f"{r}/eval.nc"]) == ["localize", "evaluate", "adversarial"]  # it compares the fine-tuned model
    assert pre.stages([f"{r}/leaderboard.csv"]) == pre.stages(None) == pre.stages(["a_rule_name"]) == list(STAGES)
    assert pre.stages(["results/random_models/sd15_seed0"]) == [] and pre.stages([f"{r}/other.nc"]) == ["model"]


def test_the_docs_overlay_points_every_file_elsewhere(clone, capsys, tmp_path):
    """docs/cluster.md's overlay (its /shared/ moved under the test's directory) and the commands shown with it."""
    overlay = next(b for b in re.findall(r"```yaml\n(.*?)```", CLUSTER.read_text(), flags=re.S) if "my_files.yaml" in b)
    (clone / "my_files.yaml").write_text(overlay.replace("/shared/", f"{tmp_path}/shared/"))
    lines = [line for block in bash_blocks(CLUSTER) for line in block if "my_files.yaml" in line]
    assert len(lines) == 2 and all(line.startswith("memprune check ") for line in lines)
    rc, out, entries = check(capsys, shlex.split(lines[0], comments=True)[1:])
    assert rc == 2 and all(e["value"].startswith(f"{tmp_path}/shared/") for e in entries.values())
    assert set(entries) == set(expected_files(yaml.safe_load((REPO / "config/sd15.yaml").read_text())))
    stand_ins(entries)
    for line in lines:
        rc, out, _ = check(capsys, shlex.split(line, comments=True)[1:])
        assert rc == 0, f"{line}\n{out}"


def test_the_docs_show_what_memprune_check_prints(clone, capsys, tmp_path, monkeypatch):
    """docs/cluster.md's `memprune check` on a machine without the files: the output shown is the one printed."""
    from huggingface_hub import constants

    text = CLUSTER.read_text()
    shown = re.findall(r"```bash\n((?:\w+=\S+ )*memprune check [^\n]*)\n```\n\n```text\n(.*?)```", text, flags=re.S)
    assert shown, "docs/cluster.md: a bash block with one `memprune check` line, then a text block of its output"
    for line, output in shown:
        argv = shlex.split(line)
        while "=" in argv[0]:  # VAR=value prefixes
            name, value = argv.pop(0).split("=", 1)
            assert name == "HF_HUB_OFFLINE"
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", value == "1")
        rc, out, _ = check(capsys, argv[1:])
        assert rc == 2
        assert out.replace(str(tmp_path / "hf"), "~/.cache/huggingface/hub") == output, line


@pytest.mark.slow
def test_a_run_stops_before_its_first_job_and_a_dry_run_plans(tmp_path):
    """A config whose model is missing: a real run starts no job and lists it with its fix; `-n` lists it and plans;
    `--no-hooks` skips the check (the run then starts jobs, which fail on the missing model)."""
    from conftest import WORKFLOW_COLLECTIONS, WORKFLOW_SETS, snakemake, write_config

    write_config(tmp_path, tmp_path / "no_such_model", WORKFLOW_SETS, WORKFLOW_COLLECTIONS)
    proc = snakemake(tmp_path, "results/iou.nc", check=False)
    assert proc.returncode != 0
    assert f"MISSING  model.path: {tmp_path / 'no_such_model'}" in proc.stderr and "no job was started" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
    assert not re.search(r"^(local)?rule \w+:", proc.stdout + proc.stderr, re.M)  # no job started
    dry = snakemake(tmp_path, "-n", "results/iou.nc", check=False)
    assert dry.returncode == 0 and "Job stats" in dry.stdout and "MISSING  model.path" in dry.stderr
    skipped = snakemake(tmp_path, "--no-hooks", "results/tiny/layers.safetensors", check=False)
    assert skipped.returncode != 0 and "MISSING" not in skipped.stderr
    assert re.search(r"^(local)?rule model_layers:", skipped.stderr, re.M)
