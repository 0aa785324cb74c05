"""The Stable Diffusion configs: overlays on the schema's defaults, every stage planned (dry runs); every shipped
config plans, and a bad prompt file of a config stops its plan naming the file and line.

Costs (2 shared CPU cores, measured): the overlay and plan checks ~25 s; the dry runs (slow tier: they start
Snakemake) ~1-10 s each, 20 of them (25 s together when measured alone).
"""

import copy
import json
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

from memprune.errors import InputError
from memprune.plan.compare import Adversarial, Attack, Evaluation, Recovery
from memprune.plan.config import Plan
from memprune.plan.schema import validate_config

SD = ["config/sd15.yaml", "config/sd2.yaml"]
RANDOM = ["config/sd15_random.yaml", "config/sd2_random.yaml"]  # their architectures, random weights
LOCALIZERS = ["wanda", "magnitude", "activation", "random", "nemo", "random_nemo"]


def load(name: str) -> dict:
    return validate_config(yaml.safe_load((REPO / name).read_text()))


def key_paths(cfg: dict, path=()):
    for k, v in cfg.items():
        yield path + (k,)
        if isinstance(v, dict):
            yield from key_paths(v, path + (k,))


@pytest.mark.parametrize("name", SD + RANDOM)
def test_sd_configs_state_only_what_they_change(name):
    raw = yaml.safe_load((REPO / name).read_text())
    full = validate_config(copy.deepcopy(raw))
    for path in key_paths(raw):
        if path in (("model", "name"), ("model", "path")) or path[0] in ("prompt_sets", "collections"):
            continue  # required, no default
        trial = copy.deepcopy(raw)
        node = trial
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
        try:
            reduced = validate_config(trial)
        except InputError:  # a required key
            continue
        assert reduced != full, f"{name}: {'.'.join(path)} is the schema's default"


@pytest.mark.parametrize("name", SD)
def test_sd_configs_plan_every_localizer_and_stage(name):
    plan = Plan(load(name), REPO)
    assert list(plan.methods) == LOCALIZERS
    nemo = plan.methods["nemo"].params  # NeMo's released code: 10 seeds, the 2nd of 50 steps, theta 5 -> 1 by 0.25, k 0
    assert (nemo["seeds"], nemo["steps"], nemo["step_index"], nemo["theta"], nemo["theta_step"], nemo["theta_min"],
            nemo["k"]) == (10, 50, 1, 5.0, 0.25, 1.0, 0)
    assert nemo["calibration"] == ["unmemorized"] and nemo["max_calibration"] == 500 and nemo["max_refine"] == 5760
    assert plan.sets["unmemorized"].size == 500 and plan.methods["random_nemo"].reference == "nemo"
    ev = Evaluation(plan)
    by_method = {m: sum(1 for x in ev.models if x.method == m) for m in ["wanda", "nemo", "random", "random_nemo"]}
    assert by_method == {"wanda": 10, "nemo": 10, "random": 1, "random_nemo": 1}
    assert [x.variant for x in ev.models if x.method is None] == ["none", "wen", "ren", "jain", "adversarial"]
    assert [m.id.split("|")[0] for m in Attack(plan).models] == ["none", "pruned:wanda", "pruned:nemo", "ren", "jain",
                                                                 "adversarial"]
    rec = Recovery(plan)
    assert rec.enabled and rec.sets == ["memorized"] and rec.controls == ["unmemorized"]
    assert [m.id.split("|")[0] for m in rec.models] == ["none", "pruned:wanda", "pruned:nemo", "wen", "ren", "jain",
                                                        "adversarial"]
    assert plan.config["evaluate"]["report_thresholds"] == [0.5, 0.7]  # MemBench's and Wen et al.'s SSCD thresholds
    assert plan.config["mitigation"]["ren"]["detect"] is False
    images = json.loads(shlex.split(rec.truth_args())[1])
    assert images["memorized"] == [plan.config["recovery"]["images"]["memorized"], plan.sets["memorized"].file]
    adv = Adversarial(plan)
    assert adv.enabled and adv.output.startswith(f"{plan.results}/adversarial/") and "--device auto" in adv.args()
    assert set(json.loads(shlex.split(adv.truth_args())[1])) == {"memorized", "unmemorized"}  # targets + retained


def test_a_recovery_set_without_images_is_refused_by_name():
    cfg = load("config/sd15.yaml")
    cfg["recovery"]["images"] = {"memorized": "data/sd1_memorized_images"}
    with pytest.raises(InputError, match=r"recovery.images.*unmemorized"):
        Recovery(Plan(cfg, REPO))


def dry_run(config: str, *targets: str) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *targets, "--configfile", config], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = proc.stdout.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


# target -> the counts of its dry run on config/sd15.yaml (the rules this config adds, and the total)
SD15_TARGETS = {
    # NeMo's searches in chunks of 4 prompts (chunks.nemo): 408 memorized prompts in 102 jobs, 91 controls in 23
    "results/iou.nc": {"capture_chunk": 116, "nemo_calibration": 1, "nemo_search": 102 + 23, "nemo_neurons": 2,
                       "masks": 24, "model_layers": 1, "total": 276},
    "results/sd15/eval.nc": {"eval_sample": 27, "eval_score": 27, "prune": 22, "nemo_search": 102, "nemo_neurons": 1,
                             "adversarial_finetune": 1, "total": 237},
    # 7 models x 1,000 targets in chunks of 8 (chunks.recovery); NeMo's edit needs its 102 search chunks
    "results/sd15/recovery.nc": {"recovery_model": 7, "recovery_search": 7 * 125, "prune": 2, "nemo_search": 102,
                                 "adversarial_finetune": 1, "total": 1043},
    "results/sd15/attack/table.csv": {"attack_generate": 6 * 63, "attack_analyze": 6, "adversarial_finetune": 1,
                                      "nemo_search": 102, "total": 545},
    # every stage's models once, then the table: 27 evaluated, 6 attacked, 7 recovered (the same subset-0 edits)
    "results/sd15/leaderboard.csv": {"eval_sample": 27, "attack_generate": 6 * 63, "recovery_model": 7,
                                     "leaderboard": 1, "leaderboard_stack": None},
    "results/sd15/detection.nc": {"detection_scores": 2, "total": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(SD15_TARGETS))
def test_sd15_targets_plan(target):
    jobs = dry_run("config/sd15.yaml", target)
    assert {k: jobs.get(k) for k in SD15_TARGETS[target]} == SD15_TARGETS[target]


@pytest.mark.slow
def test_sd2_plans_every_stage():
    jobs = dry_run("config/sd2.yaml", "results/iou.nc", "results/sd2/eval.nc", "results/sd2/recovery.nc",
                   "results/sd2/attack/table.csv", "results/sd2/detection.nc")
    assert jobs["nemo_neurons"] == 2 and jobs["recovery_model"] == 7 and jobs["adversarial_finetune"] == 1
    assert jobs["attack_generate"] == 6 * 28 and jobs["eval_sample"] == 27 and jobs["masks"] == 12


@pytest.mark.slow
def test_sd15_random_builds_its_model_and_runs_every_stage():
    jobs = dry_run("config/sd15_random.yaml", "results/iou.nc", "results/sd15_random/eval.nc",
                   "results/sd15_random/recovery.nc", "results/sd15_random/attack/table.csv",
                   "results/sd15_random/detection.nc")
    assert jobs["random_model"] == 1 and jobs["stand_in_images"] == 2  # the DAG builds what it reads
    assert jobs["nemo_neurons"] == 2 and jobs["recovery_model"] == 6 and jobs["adversarial_finetune"] == 1
    assert jobs["eval_sample"] == 9 and jobs["attack_generate"] == 6 and jobs["detection_scores"] == 2
    plan = Plan(load("config/sd15_random.yaml"), REPO)
    assert len(plan.neuron_prompts("memorized")) == 2  # NeMo on 2 prompts
    rec = Recovery(plan)  # 2 targets: the first of each set
    assert rec.cfg["max_targets"] == 1 and rec.sets + rec.controls == ["memorized", "unmemorized"]


@pytest.mark.slow
def test_sd2_random_builds_its_model_and_runs_every_stage():
    """SD2's counterpart of config/sd15_random.yaml: the same jobs, its own model (v-prediction) and SD2 prompts."""
    jobs = dry_run("config/sd2_random.yaml", "results/iou.nc", "results/sd2_random/eval.nc",
                   "results/sd2_random/recovery.nc", "results/sd2_random/attack/table.csv",
                   "results/sd2_random/detection.nc", "results/sd2_random/leaderboard.csv")
    assert jobs["random_model"] == 1 and jobs["stand_in_images"] == 2 and jobs["leaderboard"] == 1
    assert jobs["nemo_neurons"] == 2 and jobs["recovery_model"] == 6 and jobs["adversarial_finetune"] == 1
    assert jobs["eval_sample"] == 9 and jobs["attack_generate"] == 6 and jobs["detection_scores"] == 2
    plan = Plan(load("config/sd2_random.yaml"), REPO)
    assert plan.model_dir.endswith("results/random_models/sd2_seed0")
    assert plan.image_size() == {"height": 768, "width": 768}
    assert plan.sets["memorized"].file.endswith("smoke/sd2_memorized.jsonl")


# Every shipped config as it is run: a file, or an overlay after its base (config/finetune/*.yaml)
SHIPPED = [["config.yaml"]] + [[c] for c in SD + RANDOM + ["config/testbed.yaml", "config/testbed_closed_loop.yaml",
                                                           "config/testbed_finetune.yaml"]]
SHIPPED += [["config/testbed_finetune.yaml", f"config/finetune/{e}.yaml"] for e in ("e16", "e32")]
SHIPPED += [["config.yaml", "config/recovery/planted.yaml", *extra] for extra in ([], ["config/recovery/dori.yaml"])]
SHIPPED += [["config/testbed_finetune.yaml", "config/recovery/finetune.yaml"]]


def test_shipped_lists_every_config():
    files = {"config.yaml"} | {c.relative_to(REPO).as_posix() for c in (REPO / "config").rglob("*.yaml")}
    assert {f for configs in SHIPPED for f in configs} == files


@pytest.mark.slow
@pytest.mark.parametrize("configs", SHIPPED, ids=lambda c: "+".join(c))
def test_every_shipped_config_plans(configs):
    """`snakemake -n` of its default target: the plan is built, every prompt file it names read (plan.inputs)."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", *configs], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


DUPLICATED = "caption;url\na red circle;\na blue square;\na red circle;\n"  # line 4 repeats line 2


def with_duplicated_file(cfg: dict, section: str, key: str, path) -> dict:
    path.write_text(DUPLICATED)
    cfg[section][key] = str(path)
    return cfg


# the prompt file keys of the SD configs: a prompt set (every stage reads it) and the evaluation's own files
PROMPT_FILE_KEYS = [("prompt_sets", "unmemorized"), ("evaluate", "nonmemorized"), ("evaluate", "memorized")]


@pytest.mark.parametrize("section,key", PROMPT_FILE_KEYS)
def test_a_repeated_prompt_stops_the_plan_naming_file_and_line(section, key, tmp_path):
    cfg = with_duplicated_file(load("config/sd15.yaml"), section, key, tmp_path / "bad.csv")
    with pytest.raises(InputError,
                       match=rf"{re.escape(str(tmp_path / 'bad.csv'))}:4: duplicate prompt \(first at line 2\)"):
        Evaluation(Plan(cfg, REPO))


@pytest.mark.slow
@pytest.mark.parametrize("section,key", PROMPT_FILE_KEYS)
def test_a_repeated_prompt_stops_snakemake_n_naming_file_and_line(section, key, tmp_path):
    """As the SD configs met coco2014_val_10000.csv's repeats: in `snakemake -n`, not hours later in a job."""
    overlay = with_duplicated_file({section: {}}, section, key, tmp_path / "bad.csv")
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "results/iou.nc", "--configfile",
                           "config/sd15.yaml", str(tmp_path / "overlay.yaml")], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert f"{tmp_path / 'bad.csv'}:4: duplicate prompt (first at line 2)" in proc.stdout + proc.stderr
