# The leaderboard: one row per compared model (unedited, each localizer's edit, each mitigation) with what it
# removes (copies per kind), whether it stays removed (MR after the recovery attack), what it costs generation
# (prompt following, Frechet) and time, and where a ground truth exists how well its masks localize. It reads
# what evaluation, the attack, recovery and localization wrote (memprune.evaluate.leaderboard), and the time per
# image of every model measured in one job under one load (rule leaderboard_timing, memprune.evaluate.timing).
from memprune.plan.leaderboard import STACKED, Leaderboard

LEADER = Leaderboard(PLAN, EVAL, ATTACK, RECOVERY, ADVERSARIAL)
LEADER_OTHERS = LEADER.others()  # {model name: its --configfile arguments}: the configs read and checked once


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


# Another config's model: its own Snakemake run (its own config, plan and paths) in this directory, for its
# leaderboard alone; the stack below then reads it like this config's. It starts once this config's leaderboard
# is done and takes every core, so no two runs build a shared input (results/testbed/data) at once.
if LEADER_OTHERS:

    rule leaderboard_of_config:
        input:
            LEADER.output,
        output:
            "results/{other}/leaderboard.csv",
        wildcard_constraints:
            other=_alternatives(list(LEADER_OTHERS)),
        params:
            configfile=lambda wc: LEADER_OTHERS[wc.other],
            snakefile=workflow.main_snakefile,
        threads: workflow.cores
        localrule: True
        log:
            "logs/{other}/leaderboard/run.log",
        shell:
            "python -m snakemake -s {params.snakefile} --directory . --cores {threads} --nolock --rerun-incomplete "
            "{output} --configfile {params.configfile} > {log} 2>&1"


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
