"""The image size (config `sampling.height` / `width`, null: the model's default resolution) reaches every stage that
generates or probes: the plan's argument builders, the rules that use them, NeMo's probe, the recovery attack's and
the adversarial surrogates' generations. At null no command carries a size option (the default run plans the
commands it always did)."""

import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO

from memprune.plan.compare import Adversarial, Attack, Detection, Recovery
from memprune.plan.config import Plan
from memprune.plan.schema import validate_config

SIZE = "--height 64 --width 64"
# the `memprune` steps that generate or probe the model -> the plan's builder whose arguments carry the size
SIZED_STEPS = {"capture": "PLAN.sampling_args(", "eval-sample": "PLAN.sampling_args(",
               "leaderboard-timing": "PLAN.sampling_args(",
               "attack-generate": "PLAN.sampling_args(ATTACK.cfg)", "detect-scores": "DETECT.args()",
               "recover": "RECOVERY.args()", "adversarial-finetune": "ADVERSARIAL.args()",
               "nemo-calibrate": "MODEL_ARGS", "nemo": "MODEL_ARGS"}


def small_sd15_random(**sections) -> Plan:
    """config/sd15_random.yaml overlaid with `sampling: {height: 64, width: 64}` (and `sections`)."""
    cfg = yaml.safe_load((REPO / "config/sd15_random.yaml").read_text())
    cfg["sampling"].update(height=64, width=64)
    for key, value in sections.items():
        cfg[key].update(value)
    return Plan(validate_config(cfg), REPO)


def builders(plan: Plan) -> dict[str, str]:
    """The arguments of every generating or probing job, by the plan's builders (as rules/*.smk use them)."""
    size = plan.image_size()
    return {"capture, evaluation, timing": plan.sampling_args(), "attack": plan.sampling_args(Attack(plan).cfg),
            "detection": Detection(plan).args(), "recovery": Recovery(plan).args(),
            "adversarial": Adversarial(plan).args(),
            "nemo": " ".join(f"--{k} {v}" for k, v in size.items() if v is not None)}


def test_every_generating_stage_plans_the_sampling_size():
    plan = small_sd15_random()
    assert plan.image_size() == {"height": 64, "width": 64}
    for stage, args in builders(plan).items():
        assert SIZE in args, stage


def test_attack_and_detection_may_set_their_own_size():
    plan = small_sd15_random(attack={"height": 32}, detection={"width": 128})
    assert "--height 32 --width 64" in plan.sampling_args(Attack(plan).cfg)
    assert "--height 64 --width 128" in Detection(plan).args()
    assert SIZE in plan.sampling_args() and SIZE in Recovery(plan).args()


@pytest.mark.parametrize("name", ["config.yaml", "config/testbed.yaml"])
def test_a_null_size_gives_no_option(name):
    plan = Plan(validate_config(yaml.safe_load((REPO / name).read_text())), REPO)
    assert plan.image_size() == {"height": None, "width": None}
    for stage, args in builders(plan).items():
        assert "--height" not in args and "--width" not in args, stage


def test_every_generating_rule_takes_a_sized_builder():
    """Each rule running a step of SIZED_STEPS builds its command with that step's builder (rules/*.smk)."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    calls = re.findall(r'memprune\("([\w-]+)",(.*?)\)\n', text, re.S)
    found = {step for step, _ in calls}
    assert set(SIZED_STEPS) <= found
    for step, args in calls:
        if step in SIZED_STEPS:
            assert SIZED_STEPS[step] in args, step
    assert "**PLAN.image_size()" in (REPO / "rules/common.smk").read_text()  # MODEL_ARGS


def test_probe_draws_its_noise_at_the_configured_latent_size(tiny_pipe):
    from memprune.localize import nemo
    from memprune.sampling import latent_size

    layers = nemo.value_layers(tiny_pipe.unet)
    f, default = tiny_pipe.vae_scale_factor, tiny_pipe.unet.config.sample_size
    size = latent_size(tiny_pipe, 48, 64)
    assert size == (48 // f, 64 // f) != (default, default)
    probe = nemo.Probe(tiny_pipe.unet, tiny_pipe.scheduler, layers, seeds=[0, 1], steps=10, step_index=1, size=size)
    assert tuple(probe.x.shape[-2:]) == size
    embed = tiny_pipe.encode_prompt(["a red circle"], tiny_pipe.unet.device, 1, False)[0]
    assert tuple(probe.deltas(embed).shape) == (2, tiny_pipe.unet.config.in_channels, *size)
    plain = nemo.Probe(tiny_pipe.unet, tiny_pipe.scheduler, layers, seeds=[0, 1], steps=10, step_index=1)
    assert tuple(plain.x.shape[-2:]) == (default, default) == latent_size(tiny_pipe)  # null: the model's resolution


def test_nemo_commands_take_the_size(tiny_model):
    from memprune.localize import nemo_search

    pipe, _, probe, _ = nemo_search._setup(str(tiny_model), {"seed": 0, "seeds": 2, "steps": 10, "step_index": 1},
                                           "cpu", "float32", height=48, width=64)
    assert tuple(probe.x.shape[-2:]) == (48 // pipe.vae_scale_factor, 64 // pipe.vae_scale_factor)
    from memprune.cli import build_parser

    for step in ("nemo-calibrate", "recover", "adversarial-finetune", "detect-scores", "attack-generate"):
        args = build_parser().parse_args([step, "--height", "48", "--width", "64"] + REQUIRED[step])
        assert (args.height, args.width) == (48, 64), step


REQUIRED = {"nemo-calibrate": ["--model", "m", "--out", "o", "--prompts-files", "p"],
            "recover": ["--model", "m", "--variant", "none", "--groups-json", "{}", "--out", "o"],
            "adversarial-finetune": ["--model", "m", "--prompts-file", "p", "--out", "o"],
            "detect-scores": ["--model", "m", "--prompts-file", "p", "--name", "n", "--out", "o"],
            "attack-generate": ["--model", "m", "--variant", "none", "--prompts-file", "p", "--group", "g", "--out",
                                "o"]}


def test_recovery_and_surrogates_generate_at_the_size(tiny_pipe):
    """The recovery attack's generations and the adversarial surrogates come at height x width (their
    SamplingConfigs carry it): a generation of another size could not fill the target-sized arrays."""
    from memprune.attacks.extraction import resolve_variant
    from memprune.attacks.recovery import RecoverySpec, attack_targets
    from memprune.mitigate.adversarial import AdversarialSpec, surrogates

    h, w = 48, 64
    seen = []
    variant, params = resolve_variant("none")

    class Spy:  # the `none` variant, recording the sampling config it is given
        def __getattr__(self, name):
            return getattr(variant, name)

        def generate_embeds(self, pipe, embeds, seeds, cfg, params):
            seen.append((cfg.height, cfg.width))
            return variant.generate_embeds(pipe, embeds, seeds, cfg, params)

    targets = [{"prompt": "a red circle", "group": "g", "image": np.zeros((h, w, 3), np.uint8),
                "unrelated": "a blue square"}]
    spec = RecoverySpec(steps=1, batch_size=1, seeds=[0], sample_steps=1)
    res = attack_targets(tiny_pipe, Spy(), params, targets, ["prompt"], spec, ["a blue square"], height=h, width=w)
    assert seen == [(h, w), (h, w)] and res["examples"].shape[-3:-1] == (h, w)
    images, _ = surrogates(tiny_pipe, targets, AdversarialSpec(surrogate="none", surrogate_seeds=1, surrogate_steps=1),
                           ["a blue square"], height=h, width=w)
    assert images.shape == (1, h, w, 3)


def test_detection_scores_at_the_size(tiny_pipe, monkeypatch):
    import memprune.sampling
    from memprune.attacks.detection import detection_scores

    drawn, draw = [], memprune.sampling._initial_latents
    monkeypatch.setattr(memprune.sampling, "_initial_latents", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    scores = detection_scores(tiny_pipe, ["a red circle"], [0, 1], steps=2, score_steps=1, height=48, width=64)
    f = tiny_pipe.vae_scale_factor
    assert scores.shape == (1, 2) and tuple(drawn[0].shape[-2:]) == (48 // f, 64 // f)


@pytest.mark.slow
def test_the_small_run_plans_every_generating_job_at_the_size(tmp_path):
    """`snakemake -n -p` of every stage of config/sd15_random.yaml + `sampling: {height: 64, width: 64}`: every job
    running a step of SIZED_STEPS carries the size; the default config's jobs carry none."""
    overlay = tmp_path / "small.yaml"
    overlay.write_text("sampling: {height: 64, width: 64}\n")
    targets = ["results/iou.nc", "results/sd15_random/eval.nc", "results/sd15_random/recovery.nc",
               "results/sd15_random/attack/table.csv", "results/sd15_random/detection.nc",
               "results/sd15_random/leaderboard.csv"]
    for configs, expect in (([str(REPO / "config/sd15_random.yaml"), str(overlay)], True), ([], False)):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", *(targets if expect else []),
                               *(["--configfile", *configs] if configs else [])], cwd=REPO, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        commands = re.findall(r"^Shell command: python -m memprune ([\w-]+) (.*)$", proc.stdout, re.M)
        sized = [(step, args) for step, args in commands if step in SIZED_STEPS]
        if expect:  # the default run's jobs depend on what results/ already holds
            assert {step for step, _ in sized} == set(SIZED_STEPS)
        for step, args in sized:
            assert (SIZE in args) == expect and ("--height" in args) == expect, step
