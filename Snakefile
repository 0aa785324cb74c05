# memprune: locate and prune the memorization neurons of text-to-image diffusion models.
# Table of contents; the rules live in rules/, the code in workflow/memprune (the `memprune` command).
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

# Plan with the code the jobs run: this checkout's package (its localizer and variant modules included) first on
# sys.path, before any installed memprune; the jobs get the same directory first on PYTHONPATH (below).
CHECKOUT_PACKAGE = os.path.join(workflow.basedir, "workflow")
if sys.path[:1] != [CHECKOUT_PACKAGE]:
    sys.path.insert(0, CHECKOUT_PACKAGE)

import memprune as _package
from memprune.plan.schema import validate_config

if os.path.realpath(os.path.dirname(_package.__path__[0])) != os.path.realpath(CHECKOUT_PACKAGE):
    raise WorkflowError(f"memprune was imported from {_package.__path__[0]} before this Snakefile ran; it plans "
                        f"with {CHECKOUT_PACKAGE}/memprune, the package its jobs run: run Snakemake in a fresh process")

min_version("9.0")


# How configs combine (docs/configuration.md): the schema's defaults, then config.yaml when no --configfile is
# given, else the --configfile files overlaid in order (config.yaml is skipped: its testbed collections would
# leak into an SD run), then --config key=value.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



# Jobs run `python -m memprune <step>` from this checkout, in whatever environment runs them (the local one,
# or envs/memprune.yaml with --sdm conda), installed or not. (`snakemake --lint` notes PYTHONPATH as "used but not
# asserted with envvars": it is set here for the jobs, never required from the user, so envvars does not apply.)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (CHECKOUT_PACKAGE, os.environ.get("PYTHONPATH")) if p
)


# The schema (workflow/schemas/config.schema.yaml) fills every default; an unknown key, localizer or variant
# is named with the known ones.
validate_config(config)


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/testbed.smk"
include: "rules/activations.smk"
include: "rules/masks.smk"
include: "rules/mitigate.smk"
include: "rules/evaluate.smk"
include: "rules/analysis.smk"
include: "rules/attack.smk"
include: "rules/detection.smk"
include: "rules/recovery.smk"
include: "rules/leaderboard.smk"


rule all:
    input:
        PLAN.targets(),
    default_target: True
