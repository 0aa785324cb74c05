# memprune: locate and prune the memorization neurons of text-to-image diffusion models.
# Table of contents; the rules live in rules/, the code in workflow/memprune (the `memprune` command).
import os

from snakemake.utils import min_version, validate

min_version("9.0")


# The default config applies only when no --configfile is given: Snakemake would otherwise merge it into
# the user's config (the testbed's collections would leak into an SD run). --config still overrides keys.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



# Jobs run `python -m memprune <step>` from this checkout, in whatever environment runs them (the local one,
# or envs/memprune.yaml with --sdm conda), installed or not. (`snakemake --lint` notes PYTHONPATH as "used but not
# asserted with envvars": it is set here for the jobs, never required from the user, so envvars does not apply.)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.join(workflow.basedir, "workflow"), os.environ.get("PYTHONPATH")) if p
)


validate(config, "workflow/schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/testbed.smk"
include: "rules/activations.smk"
include: "rules/masks.smk"
include: "rules/evaluate.smk"
include: "rules/analysis.smk"
include: "rules/attack.smk"


rule all:
    input:
        PLAN.targets(),
    default_target: True
