# Wiring only: the plan (memprune.plan.config, pure and unit-tested) turns the config into prompt sets, collections,
# localizers, compared models, paths and command arguments. Prompt files are read when the plan is built, so a
# bad file stops the run before any job starts, naming the file and line.
import json
from pathlib import Path

from memprune.plan.config import Plan, options, prompts_digest
from memprune.plan.chunks import nemo_chunk_files, nemo_chunks
from memprune.plan.compare import Adversarial, Attack, Detection, Evaluation, Recovery
from memprune.formats.prompts import read_prompts


def _detected_prompts(name):
    """Closed loop: a detected set's prompts, once the checkpoint `detected_prompts` wrote them (before that,
    Snakemake's IncompleteCheckpointException tells it to build the jobs needing them afterwards)."""
    checkpoints.detected_prompts.get(pset=name)
    return read_prompts(Path(PLAN.sets[name].file))


PLAN = Plan(config, Path(workflow.basedir), _detected_prompts)
EVAL = Evaluation(PLAN)
ATTACK = Attack(PLAN)
RECOVERY = Recovery(PLAN)
ADVERSARIAL = Adversarial(PLAN)
DETECT = Detection(PLAN)
# device, dtype and image size (config sampling; none at the model's default) of NeMo's calibration and search, which
# take no sampling options (the other stages' sizes come with PLAN.sampling_args, RECOVERY.args, ADVERSARIAL.args)
MODEL_ARGS = options(device=config["model"]["device"], dtype=config["model"]["dtype"], **PLAN.image_size())
CONDA_ENV = "../envs/memprune.yaml"
# the copy metric's similarity for every stage that decides copies (evaluate.sscd; none: SSIM, and the commands
# stay as they were): " --sscd <checkpoint>" or ""
COPY_SSCD = f" --sscd {PLAN.repo_path(config['evaluate']['sscd'])}" if config["evaluate"].get("sscd") else ""


def memprune(step, args):
    """The shell command of a rule: one `memprune <step>`; logging goes to stderr, which the rule's log holds."""
    return f"python -m memprune {step} {args} 2> {{log}}"


def model_input():
    """The model directory as an input (so a retrained testbed reruns what depends on it)."""
    return [PLAN.model_dir] if PLAN.model_is_local else []


def _alternatives(paths):
    """A wildcard constraint that matches exactly these paths (no regex decodes a name)."""
    import re

    return "|".join(re.escape(p) for p in paths) or "^$"


def collection_chunks(wildcards):
    col = PLAN.collections[wildcards.collection]
    if PLAN.sets[col.set].detected:  # closed loop: the chunks of a detected set exist once detection ran
        PLAN.prompts(col.set)
    return PLAN.collection_chunks(wildcards.collection)


def mask_inputs(wildcards):
    if wildcards.mtag != PLAN.methods[wildcards.method].tag:
        raise ValueError(f"{wildcards.method} masks with parameters {wildcards.mtag}: the config asks for "
                         f"{PLAN.methods[wildcards.method].tag}")
    return PLAN.mask_inputs(wildcards.method, wildcards.collection)


def checkpoint_input(models, wildcard):
    """Input function: the edit checkpoint of the compared model named by `wildcard` (pruned ones), else none."""

    def inputs(wildcards):
        model = models[getattr(wildcards, wildcard)]
        path = PLAN.checkpoint_of(model)
        return {"checkpoint": path} if path else {}

    return inputs


def stacked_rule_settings(prefix):
    """A profile's set-resources and set-threads name a rule: the stacked leaderboard's copy of it for another config
    (<prefix><rule>, rules/leaderboard.smk) gets them too, as in that config's own run. Snakemake applies them by rule
    name as it makes a rule, from these dicts (and passes them on to the jobs it submits)."""
    settings = workflow.resource_settings
    for by_name in (settings._parsed_overwrite_resources, settings._parsed_overwrite_threads):
        for name in [n for n in by_name if "__" not in n]:
            by_name.setdefault(prefix + name, by_name[name])


wildcard_constraints:
    collection=r"[A-Za-z0-9_-]+",
    pset=r"[A-Za-z0-9_-]+",
    method=r"[A-Za-z0-9_-]+",
    mtag=r"[^/]+",
    subset=r"\d+",
    chunk=r"\d+",


# Preflight (`memprune check`, memprune.plan.preflight): the inputs from outside the workflow (weights, SSCD, CLIP,
# training images) that the requested targets need. A run stops before its first job when one is missing, listing
# each with its fix (docs/cluster.md); `--no-hooks` skips the check. A dry run (-n) still plans: it lists what the
# config's stages lack (its targets are not known yet when the Snakefile is read). Another config of the stacked
# leaderboard (a module, rules/leaderboard.smk) is not checked: its inputs are assumed.
import os
import sys

from memprune.plan.preflight import MISSING, Preflight, format_report, scope_of

PREFLIGHT = Preflight(PLAN)
PREFLIGHT_CONFIGS = [os.path.relpath(f) for f in workflow.config_settings.configfiles] or ["config.yaml"]

if workflow.is_main_process and workflow.output_settings.dryrun and workflow.modifier.is_main_snakefile():
    _entries = PREFLIGHT.check()
    if any(e.status == MISSING for e in _entries):
        print(format_report(_entries, scope_of(PREFLIGHT, None, PREFLIGHT_CONFIGS), only_missing=True)
              + "\n(dry run: a run stops before its first job when its targets need one of these)", file=sys.stderr)


onstart:
    if not workflow.touch:
        _targets = sorted(map(str, workflow.dag_settings.targets)) or ["all"]  # none given: rule all's
        _entries = PREFLIGHT.check(_targets)
        if any(e.status == MISSING for e in _entries):
            from snakemake.exceptions import WorkflowError

            print(format_report(_entries, scope_of(PREFLIGHT, _targets, PREFLIGHT_CONFIGS), only_missing=True),
                  file=sys.stderr)
            raise WorkflowError("memprune check: the inputs listed above are missing, so no job was started; fetch "
                                "them (each line says how), or run with --no-hooks to skip this check")
