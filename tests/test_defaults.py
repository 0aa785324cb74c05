"""One source of defaults: the config schema, the dataclasses and the command line agree on every default they
share (sampling, the testbed report's copy threshold, Wen et al.'s mitigation, detection)."""

import inspect

import yaml

from conftest import REPO


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


def test_report_threshold_defaults_agree():
    from memprune.testbed.report import testbed_report

    schema = schema_defaults("testbed", "report")
    assert inspect.signature(testbed_report).parameters["threshold"].default == schema["copy_threshold"]
    assert cli_defaults("testbed-report")["threshold"] == schema["copy_threshold"]


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
