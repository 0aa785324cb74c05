# The leaderboard: one row per compared model (unedited, each localizer's edit, each mitigation) with what it
# removes (copies per kind), whether it stays removed (MR after the recovery attack), what it costs generation
# (prompt following, Frechet) and time, and where a ground truth exists how well its masks localize. It reads
# what evaluation, the attack, recovery and localization wrote (memprune.evaluate.leaderboard), and the time per
# image of every model measured in one job under one load (rule leaderboard_timing, memprune.evaluate.timing).
from memprune.plan.leaderboard import STACKED, Leaderboard, rule_prefix

LEADER = Leaderboard(PLAN, EVAL, ATTACK, RECOVERY, ADVERSARIAL)


rule leaderboard_timing:
    conda:
        CONDA_ENV
    input:
        checkpoints=LEADER.timing_checkpoints(),
        model=model_input(),
    output:
        LEADER.timing,
    params:
        models=LEADER.timing_json(),
    threads: 2
    resources:
        gpu=1,
    log:
        PLAN.log("leaderboard", "timing"),
    benchmark:
        PLAN.bench("leaderboard", "timing")
    shell:
        memprune("leaderboard-timing", f"--model {PLAN.model_dir} --models-json {{params.models:q}} "
                 f"{PLAN.sampling_args()} {LEADER.timing_args()} --out {{output}}")


rule leaderboard:
    conda:
        CONDA_ENV
    input:
        **LEADER.inputs(),
    output:
        csv=LEADER.output,
        figure=report(LEADER.figure, category="Leaderboard", caption="../report/leaderboard.rst"),
    params:
        models=LEADER.models_json(),
        args=LEADER.args(),
    log:
        PLAN.log("leaderboard", "table"),
    benchmark:
        PLAN.bench("leaderboard", "table")
    shell:
        memprune("leaderboard", "--models-json {params.models:q} {params.args} --out {output.csv} --figure {output.figure}")


# The stack, results/leaderboard.csv: the leaderboard of every config of `leaderboard.configs`. This config's is built
# above; every other config is a module of this workflow: this Snakefile read again with that config (its files
# overlaid as its own run's --configfile would; a module skips `configfile:`), so its plan, paths and commands are
# those of its own run, under rule names <model>__<rule>, and one DAG holds every config's jobs (`snakemake -n
# results/leaderboard.csv` lists them all). The rules whose files every config writes to the same path (the copies
# results/iou.nc and results/density.nc, random models, the shipped testbed's data, model and CLIP) are this
# config's alone, excluded from the modules with rule all, so a job two configs share runs once; stacked configs
# agree on what those files hold (memprune.plan.leaderboard.SHARED_KEYS). Read as a module, the Snakefile builds
# its model's leaderboard only: it neither stacks nor reads the configs its own config lists.
if workflow.modifier.is_main_snakefile():
    for STACKED_MODEL, STACKED_CONFIG in LEADER.others().items():
        STACKED_PREFIX = rule_prefix(STACKED_MODEL)  # also the module's name, which Snakemake makes a global name
        stacked_rule_settings(STACKED_PREFIX)  # rules/common.smk

        module:
            name:
                STACKED_PREFIX
            snakefile:
                workflow.main_snakefile
            config:
                STACKED_CONFIG

        use rule * from STACKED_PREFIX exclude all, latest_analysis, random_model, testbed_data, train_testbed, train_clip as STACKED_PREFIX*

    rule leaderboard_stack:
        conda:
            CONDA_ENV
        input:
            LEADER.stacked_inputs(),
        output:
            STACKED,
        log:
            "logs/leaderboard_stack.log",
        shell:
            memprune("leaderboard-stack", "--inputs {input} --out {output}")
