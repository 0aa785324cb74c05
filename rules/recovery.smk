# Is it gone? The recovery attack of "Finding Dori" (attacks/recovery.py) on every model of config `recovery`:
# jobs of `chunks.recovery` targets per model (rule recovery_search), each model's merged (rule recovery_model),
# then results/<name>/recovery.nc, recovery.csv (DoRI's table) and a figure. Wen's chunks reuse the unedited
# model's searches (the same UNet, the same draws) and only generate with its mitigation.
RECOVERY_MODELS = RECOVERY.by_path()


rule recovery_search:
    conda:
        CONDA_ENV
    input:
        unpack(checkpoint_input(RECOVERY_MODELS, "recmodel")),
        model=model_input(),
        data=RECOVERY.truth_inputs(),
        searches=lambda wc: RECOVERY.searches_from(RECOVERY_MODELS[wc.recmodel], wc.chunk),
    output:
        f"{RECOVERY.dir}/{{recmodel}}/chunk{{chunk}}.nc" if RECOVERY.enabled else [],
    wildcard_constraints:
        recmodel=_alternatives(RECOVERY_MODELS),
    params:
        variant=lambda wc, input: PLAN.variant_args(RECOVERY_MODELS[wc.recmodel], input.get("checkpoint")),
        id=lambda wc: RECOVERY_MODELS[wc.recmodel].id,
        groups=RECOVERY.groups_json() if RECOVERY.enabled else "",
        spec=RECOVERY.spec if RECOVERY.enabled else "",
        reuse=lambda wc, input: f"--searches-from {input.searches}" if input.searches else "",
        subset=lambda wc: RECOVERY.subset_args(RECOVERY_MODELS[wc.recmodel]),
        targets=RECOVERY.targets_args(),
        truth=RECOVERY.truth_args(),
        chunk=lambda wc: RECOVERY.chunk_args(wc.chunk),
    threads: RECOVERY.cfg.get("threads", 1)  # 1: two jobs at once on 2 cores (benchmarks/recovery_threads.py)
    resources:
        gpu=1,
    log:
        PLAN.log(f"recovery/{RECOVERY.tag}" if RECOVERY.enabled else "recovery", "{recmodel}/chunk{chunk}"),
    benchmark:
        PLAN.bench(f"recovery/{RECOVERY.tag}" if RECOVERY.enabled else "recovery", "{recmodel}/chunk{chunk}")
    shell:
        memprune("recover", f"{{params.variant}} --model {PLAN.model_dir} {{params.truth}} --groups-json {{params.groups:q}} --spec {{params.spec:q}} "
                 f"{RECOVERY.args() if RECOVERY.enabled else ''} --id {{params.id:q}} --device {config['model']['device']} "
                 f"--dtype {config['model']['dtype']} {{params.reuse}} {{params.targets}} {{params.subset}}{COPY_SSCD} "
                 f"{{params.chunk}} --out {{output}}")


rule recovery_model:
    conda:
        CONDA_ENV
    input:
        lambda wc: RECOVERY.chunks(RECOVERY_MODELS[wc.recmodel]),
    output:
        f"{RECOVERY.dir}/{{recmodel}}.nc" if RECOVERY.enabled else [],
    wildcard_constraints:
        recmodel=_alternatives(RECOVERY_MODELS),
    log:
        PLAN.log(f"recovery/{RECOVERY.tag}" if RECOVERY.enabled else "recovery", "{recmodel}"),
    benchmark:
        PLAN.bench(f"recovery/{RECOVERY.tag}" if RECOVERY.enabled else "recovery", "{recmodel}")
    shell:
        memprune("recovery-merge", "--chunks {input} --out {output}")


rule recovery_table:
    conda:
        CONDA_ENV
    input:
        [RECOVERY.result(m) for m in RECOVERY.models],
    output:
        nc=RECOVERY.output,
        csv=f"{PLAN.results}/recovery.csv",
        figure=f"{PLAN.results}/figures/recovery.png",
    log:
        PLAN.log("recovery", "table"),
    benchmark:
        PLAN.bench("recovery", "table")
    shell:
        memprune("recovery-table", "--variants {input} --out {output.nc} --csv {output.csv} --figure {output.figure}")
