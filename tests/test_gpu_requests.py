"""Every rule that runs a model (a UNet, VAE or text encoder) asks for a GPU: it declares gpu=1 in rules/*.smk, the
SLURM profile gives it a GPU model, memory, run time and cpus, and every shipped config's plan under that profile
(a dry run of its default target and of every stage it enables) gives each such job a GPU. The CPU profile stays the GPU
profile without its GPU requests (`memprune profiles` writes it from it: tests/test_profiles.py). Configs are found on
disk and rules read by name from each plan, so a new config is checked as it lands, and a new rule fails here until
it is classified below."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

PROFILES = REPO / "workflow" / "profiles"
# Rules that load and run a diffusion model's UNet, VAE or text encoder.
MODEL_RULES = {"capture_chunk", "capture_null", "nemo_calibration", "nemo_search", "eval_sample", "eval_score",
               "attack_generate", "detection_scores", "recovery_search", "adversarial_finetune", "train_testbed",
               "train_derived_testbed", "testbed_report", "leaderboard_timing"}
# Rules that read weights or stored arrays only (model_layers copies the observed weights, masks reads |W|, prune
# edits weights, random_model writes random ones), make data, or tabulate; train_clip trains the testbed's tiny CLIP
# metric model on the CPU; nemo_neurons and recovery_model merge search chunks; eval_aggregate asks a GPU in its rule
# only for fid_reference: images; the leaderboard and its stack read the stages' files.
CPU_RULES = {"all", "gather_subsets", "model_layers", "masks", "prune", "analysis", "latest_analysis", "localization",
             "eval_aggregate", "nemo_neurons", "recovery_model",
             "train_clip", "attack_analyze", "attack_table", "detection_report", "detected_prompts", "recovery_table",
             "testbed_data", "extend_testbed_data", "random_model", "stand_in_images", "leaderboard",
             "leaderboard_stack"}
CONFIGS = sorted([REPO / "config.yaml", *(REPO / "config").glob("*.yaml")])


def _profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def _rule_blocks() -> dict[str, str]:
    """{rule name: its text} over rules/*.smk (a block runs to the next rule/checkpoint at its indent or less)."""
    blocks = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        text = path.read_text()
        heads = list(re.finditer(r"^( *)(?:rule|checkpoint) (\w+):", text, re.M))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            blocks[m.group(2)] = text[m.start():end]
    return blocks


def test_model_rules_declare_a_gpu():
    blocks = _rule_blocks()
    missing = sorted(MODEL_RULES - set(blocks))
    assert not missing, f"rules named in MODEL_RULES but not found in rules/*.smk: {missing}"
    no_gpu = sorted(r for r in MODEL_RULES if not re.search(r"resources:\s*\n\s*gpu=1,", blocks[r]))
    assert not no_gpu, f"model-running rules without `resources: gpu=1`: {no_gpu}"
    unknown = sorted(set(blocks) - MODEL_RULES - CPU_RULES)
    assert not unknown, f"rules not classified in tests/test_gpu_requests.py (MODEL_RULES or CPU_RULES): {unknown}"


def test_slurm_profile_sizes_every_model_rule():
    res = _profile("slurm")["set-resources"]
    for rule in sorted(MODEL_RULES):
        assert rule in res, f"workflow/profiles/slurm has no set-resources for {rule}"
        r = res[rule]
        assert r.get("gpu", 0) >= 1 and r.get("gpu_model"), (rule, r)
        assert {"mem_mb", "runtime", "cpus_per_task"} <= set(r), (rule, r)
    for rule, r in res.items():
        assert rule in MODEL_RULES or ("gpu" not in r and "gpu_model" not in r), f"CPU rule {rule} asks a GPU: {r}"
    assert "groups" not in _profile("slurm")  # a group job asks the SUM of its parallel components' GPUs


def test_local_profile_has_one_gpu_and_host_memory_for_model_rules():
    local = _profile("local")
    assert local["resources"]["gpu"] == 1
    for rule in MODEL_RULES:
        assert local["set-resources"][rule]["mem_mb"] <= local["resources"]["mem_mb"], rule


def test_cpu_profile_is_the_slurm_profile_without_gpus():
    gpu, cpu = _profile("slurm"), _profile("slurm-cpu")
    same = {k: v for k, v in gpu.items() if k not in ("default-resources", "set-resources")}
    assert {k: cpu[k] for k in same} == same
    assert set(cpu) - set(gpu) <= {"set-threads"}
    assert set(cpu["set-resources"]) == set(gpu["set-resources"])
    for rule, g in gpu["set-resources"].items():
        c = cpu["set-resources"][rule]
        assert "gpu_model" not in c and c.get("gpu", 0) == 0, (rule, c)
        assert c["gpu"] == 0, rule  # overrides every rule-level gpu=1 (eval_aggregate's: with fid_reference)
        assert c["runtime"] == g["runtime"] and 1 <= c["cpus_per_task"] <= 2, (rule, c)
        assert c["mem_mb"] <= g["mem_mb"], (rule, c)
    assert all(t <= 2 for t in cpu.get("set-threads", {}).values())


def stage_targets(configfile) -> list[str]:
    """The config's default target and every stage it can run: evaluation, the extraction attack, detection, and the
    recovery attack and adversarial fine-tuning where it enables them (the config loaded as the Snakefile loads it:
    alone, defaults filled in by the schema)."""
    from snakemake.utils import validate

    from memprune.plan.compare import Adversarial, Attack, Detection, Evaluation, Recovery
    from memprune.plan.config import Plan

    config = yaml.safe_load(configfile.read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    plan = Plan(config, REPO, lambda name: [])  # detected sets: their prompts exist once detection ran
    recovery, adversarial = Recovery(plan), Adversarial(plan)
    return [*plan.targets(), *Evaluation(plan).targets(), *Attack(plan).targets(), *Detection(plan).targets(),
            *recovery.targets(), *([adversarial.output] if adversarial.enabled else [])]


def planned_jobs(configfile) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job of the config's stage targets, planned under the SLURM profile."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", *stage_targets(configfile), "-n", "--forceall",
                           "--profile", str(PROFILES / "slurm"), "--configfile", str(configfile)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{configfile.name}: dry run failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    jobs, rule = [], None
    for line in proc.stdout.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            jobs.append((rule, dict(kv.split("=", 1) for kv in m.group(1).split(", "))))
            rule = None
        elif line.startswith("Job stats:"):
            rule = None
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize("configfile", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_planned_model_job_asks_for_a_gpu(configfile):
    jobs = planned_jobs(configfile)
    rules = {rule for rule, _ in jobs}
    assert jobs and "analysis" in rules, f"{configfile.name}: nothing planned"
    unknown = sorted(rules - MODEL_RULES - CPU_RULES)
    assert not unknown, f"{configfile.name}: rules not classified in tests/test_gpu_requests.py: {unknown}"
    lacking = sorted({rule for rule, res in jobs if rule in MODEL_RULES
                      and not (int(res.get("gpu", 0)) >= 1 and res.get("gpu_model"))})
    assert not lacking, f"{configfile.name}: jobs of model-running rules without a GPU request: {lacking}"
    counts = {r: sum(1 for rule, _ in jobs if rule == r) for r in sorted(rules & MODEL_RULES)}
    print(f"\n{configfile.name}: {len(jobs)} jobs, GPU jobs per rule {counts}")


def test_the_gpu_model_is_named_once():
    """A cluster's GPU name is set in one place: the anchor at the first GPU rule, which every other rule refers to."""
    text = (PROFILES / "slurm" / "config.yaml").read_text()
    named = re.findall(r"^\s+gpu_model: (.+?)\s*(?:#.*)?$", text, re.M)
    anchor, name = named[0].split()
    assert anchor.startswith("&") and named[1:] == ["*" + anchor[1:]] * (len(named) - 1), named
    models = {res["gpu_model"] for res in _profile("slurm")["set-resources"].values() if res.get("gpu")}
    assert models == {name}
