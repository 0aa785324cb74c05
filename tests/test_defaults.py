"""One source of defaults: the config schema fills every default (nested ones too), the dataclasses and the
command line agree on every default they share (sampling, the copy threshold, Wen et al.'s mitigation,
detection), and configs combine as docs/configuration.md says."""

import copy
import inspect
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from memprune.plan import lay_out_clone

MINIMAL = {"model": {"name": "m", "path": "resources/testbed"},
           "prompt_sets": {"memorized": "resources/prompts/testbed/duplicated.txt"},
           "collections": {"mem": {"set": "memorized", "n_subsets": 2, "size": 5}}}  # the schema's required keys


def schema_defaults(*path):
    node = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    for key in path:
        node = node["properties"][key]
    return {k: v.get("default") for k, v in node["properties"].items()}


def cli_defaults(command):
    from memprune.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a.default for a in sub.choices[command]._actions}


def test_sampling_defaults_agree():
    from memprune.sampling import SamplingConfig

    schema, config = schema_defaults("sampling"), SamplingConfig()
    for key in ("steps", "guidance", "batch_size", "height", "width"):
        assert getattr(config, key) == schema[key], key
    for command in ("sample", "capture", "eval-sample", "attack-generate"):
        cli = cli_defaults(command)
        for key in ("steps", "guidance", "batch_size"):
            assert cli[key] == schema[key], (command, key)


def schema_filled(schema: dict, path: str = "") -> dict:
    """Every schema default, nested: what a config holding only the required keys must get."""
    out = {}
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub:
            value = copy.deepcopy(sub["default"])
            if isinstance(value, dict) and "properties" in sub:
                value = {**schema_filled(sub), **value}
            out[key] = value
    return out


def test_a_minimal_config_gets_every_default_nested_ones_too():
    from memprune.plan.schema import load_schema, validate_config

    cfg = validate_config(copy.deepcopy(MINIMAL))
    expected = schema_filled(load_schema())
    for stage in ("evaluate", "attack", "recovery", "adversarial"):
        expected[stage]["copy_threshold"] = 0.4  # resolved from the top-level copy_threshold
    expected["testbed"]["report"]["copy_threshold"] = 0.4
    assert {k: v for k, v in cfg.items() if k not in MINIMAL} == expected
    assert cfg["testbed"]["dataset"]["n_duplicated"] == 50 and cfg["evaluate"]["clip"]["train"]["steps"] == 2000
    assert cfg["mitigation"]["wen"]["target_loss"] == 1.5 and cfg["recovery"]["threads"] == 1
    assert cfg["model"]["device"] == "auto" and cfg["collections"]["mem"]["seed"] == 0


@pytest.mark.parametrize("name", ["config.yaml", "config/testbed.yaml", "config/testbed_finetune.yaml",
                                  "config/testbed_closed_loop.yaml", "config/sd15.yaml", "config/sd2.yaml"])
def test_defaults_are_filled_as_snakemake_fills_them(name):
    from snakemake.utils import validate

    from memprune.plan.schema import load_schema, resolve_shared, schema_order, validate_config

    cfg = yaml.safe_load((REPO / name).read_text())
    ours, theirs = validate_config(copy.deepcopy(cfg)), copy.deepcopy(cfg)
    validate(theirs, str(REPO / "workflow/schemas/config.schema.yaml"), set_default=True)
    assert ours == resolve_shared(schema_order(theirs, load_schema()))


def test_one_copy_threshold_every_stage_defaults_to():
    from memprune.plan.config import Plan
    from memprune.plan.schema import validate_config

    cfg = validate_config({**copy.deepcopy(MINIMAL), "copy_threshold": 0.5, "attack": {"copy_threshold": 0.3}})
    assert [cfg[s]["copy_threshold"] for s in ("evaluate", "recovery", "adversarial")] == [0.5, 0.5, 0.5]
    assert cfg["testbed"]["report"]["copy_threshold"] == 0.5 and cfg["attack"]["copy_threshold"] == 0.3
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    stages = [schema_defaults("testbed", "report")] + [schema_defaults(s) for s in
                                                       ("evaluate", "attack", "recovery", "adversarial")]
    assert schema["properties"]["copy_threshold"]["default"] == 0.4 and all(s["copy_threshold"] is None for s in stages)
    # a config validated by Snakemake's own validate (no resolution) plans the same: the Plan resolves it
    from snakemake.utils import validate

    raw = copy.deepcopy(MINIMAL)
    validate(raw, str(REPO / "workflow/schemas/config.schema.yaml"))
    assert raw["evaluate"]["copy_threshold"] is None
    Plan(raw, REPO)
    assert raw["evaluate"]["copy_threshold"] == raw["recovery"]["copy_threshold"] == 0.4


def test_copy_threshold_code_defaults_agree_with_the_schema():
    from memprune.attacks.recovery import RecoverySpec
    from memprune.evaluate.aggregate import aggregate
    from memprune.mitigate.adversarial import AdversarialSpec
    from memprune.testbed.report import testbed_report

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    default = schema["properties"]["copy_threshold"]["default"]
    assert inspect.signature(testbed_report).parameters["threshold"].default == default
    assert inspect.signature(aggregate).parameters["copy_threshold"].default == default
    assert RecoverySpec().copy_threshold == AdversarialSpec().copy_threshold == default
    assert cli_defaults("testbed-report")["threshold"] == default
    assert (cli_defaults("eval-aggregate")["copy_threshold"] == cli_defaults("attack-analyze")["copy_threshold"]
            == default)


def test_wen_defaults_agree():
    from memprune import variants
    from memprune.mitigate.wen import wen_mitigated_embeddings

    schema = schema_defaults("mitigation", "wen")
    signature = inspect.signature(wen_mitigated_embeddings).parameters
    wen = variants.get("wen").default_params
    for key in ("lr", "max_iters", "target_loss"):
        assert signature[key].default == schema[key] == wen[key], key


def test_detection_defaults_agree():
    schema, cli = schema_defaults("detection"), cli_defaults("detect-scores")
    assert cli["score_steps"] == schema["score_steps"] and cli["n_seeds"] == schema["n_seeds"]


# ------------------------------------------------------------------------------------------ how configs combine


def plan_paths(wd, *args) -> str:
    """The dry run's job list (snakemake -n) in a new directory `wd` laid out as a clone."""
    lay_out_clone(REPO, wd)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], cwd=wd,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_configs_combine_default_then_overlays_in_order(tmp_path):
    """No --configfile: config.yaml. --configfile X: the schema's defaults + X (config.yaml skipped). Several:
    overlaid in order, the later file's keys winning, mappings merged key by key."""
    default = plan_paths(tmp_path / "default", "results/iou.nc")
    assert "results/testbed_planted/masks/oracle/" in default

    alone = plan_paths(tmp_path / "alone", "results/iou.nc", "--configfile", "config/testbed.yaml")
    assert "results/testbed/masks/wanda/seed0_steps50_g2.0_paper_sp0.01_tau10/mem_k10" in alone
    assert "testbed_planted" not in alone and "plant_k10" not in alone and "oracle" not in alone

    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "overlay.yaml").write_text("masks: {sparsity: 0.02}\nevaluate: {collections: [mem_k20]}\n")
    both = plan_paths(tmp_path / "both", "results/iou.nc", "--configfile", "config/testbed.yaml", "overlay.yaml")
    assert "results/testbed/masks/wanda/seed0_steps50_g2.0_paper_sp0.02_tau10/mem_k10" in both  # the later file wins
    assert "sp0.01" not in both and "results/testbed/masks/nemo/" in both  # the first file's localizers kept
