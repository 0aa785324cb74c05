# Extraction attack (Carlini et al. 2023; the paper's section 5.4, Table 1) on every model the plan compares
# (the registry's variants: unedited, pruned by a localizer, Wen, ...), and memorization detection (Wen et al.
# 2024) with its closed loop: a prompt set given as {detect_from, top_k} is the top-k scored prompts of a pool,
# written by the checkpoint `detected_prompts`, and localization, pruning, evaluation and the attack run on it.
#
# Attack: generation + tiled distances per (model, prompt set, chunk of prompts) are cached under
# attack/cache/<attack tag>/<model path>/; the thresholds only touch the cheap per-model analysis.
ATTACK_MODELS = ATTACK.by_path()


rule attack_generate:
    conda:
        CONDA_ENV
    input:
        unpack(checkpoint_input(ATTACK_MODELS, "attackmodel")),
        model=model_input(),
        data=[ATTACK.data] if ATTACK.data else [],
    output:
        f"{ATTACK.dir}/cache/{ATTACK.tag}/{{attackmodel}}/{{pset}}_chunk{{chunk}}.nc",
    wildcard_constraints:
        attackmodel=_alternatives(ATTACK_MODELS),
    params:
        variant=lambda wc, input: PLAN.variant_args(ATTACK_MODELS[wc.attackmodel], input.get("checkpoint")),
        prompts_file=lambda wc: PLAN.sets[wc.pset].file,
        range=lambda wc: "--start {} --stop {}".format(*ATTACK.chunk_range(int(wc.chunk))),
        digest=lambda wc: prompts_digest(PLAN.prompts(wc.pset)[slice(*ATTACK.chunk_range(int(wc.chunk)))]),
    threads: 2
    resources:
        gpu=1,
    log:
        PLAN.log(f"attack/{ATTACK.tag}", "{attackmodel}/{pset}_chunk{chunk}"),
    benchmark:
        PLAN.bench(f"attack/{ATTACK.tag}", "{attackmodel}/{pset}_chunk{chunk}")
    shell:
        memprune("attack-generate", f"{{params.variant}} --model {PLAN.model_dir} --prompts-file {{params.prompts_file}} "
                 f"{{params.range}} --group {{wildcards.pset}} --n-samples {ATTACK.cfg['n_samples']} --seed {ATTACK.cfg['seed']} "
                 f"--tile-grid {ATTACK.cfg['tile_grid']} {options(data=ATTACK.data)}{COPY_SSCD} "
                 f"{PLAN.sampling_args(ATTACK.cfg)} --out {{output}}")


rule attack_analyze:
    conda:
        CONDA_ENV
    input:
        chunks=lambda wc: ATTACK.chunks(ATTACK_MODELS[wc.attackmodel]),
        data=[ATTACK.data] if ATTACK.data else [],
    output:
        f"{ATTACK.dir}/{{attackmodel}}.nc",
    wildcard_constraints:
        attackmodel=_alternatives(ATTACK_MODELS),
    params:
        id=lambda wc: ATTACK_MODELS[wc.attackmodel].id,
    log:
        PLAN.log("attack/analyze", "{attackmodel}"),
    benchmark:
        PLAN.bench(f"attack/{ATTACK.tag}", "{attackmodel}/analyze")
    shell:
        memprune("attack-analyze", f"--chunks {{input.chunks}} --variant {{params.id:q}} --threshold {ATTACK.cfg['distance_threshold']} "
                 f"--min-clique {ATTACK.cfg['min_clique']} --copy-threshold {ATTACK.cfg['copy_threshold']}{COPY_SSCD} "
                 f"{options(data=ATTACK.data)} --out {{output}}")


rule attack_table:
    conda:
        CONDA_ENV
    input:
        variants=[ATTACK.result(m) for m in ATTACK.models],
        chunks=[ATTACK.chunks(m)[0] for m in ATTACK.models] if ATTACK.sets else [],
    output:
        table=report(ATTACK.targets()[0], category="Extraction attack", caption="../report/attack_table.rst"),
        figure=report(ATTACK.targets()[1], category="Extraction attack", caption="../report/attack_fig.rst"),
    params:
        chunks=json.dumps({m.id: ATTACK.chunks(m)[:1] for m in ATTACK.models} if ATTACK.sets else {}),
    log:
        PLAN.log("attack", "table"),
    shell:
        memprune("attack-table", "--variants {input.variants} --out {output.table} --figure {output.figure} "
                 f"--chunks-json {{params.chunks:q}} {options(data=ATTACK.data)}")


# ---------------------------------------------------------------------------------------------- detection


rule detection_scores:
    conda:
        CONDA_ENV
    input:
        model_input(),
    output:
        DETECT.scores("{pset}"),
    params:
        prompts_file=lambda wc: PLAN.sets[wc.pset].file,
        digest=lambda wc: prompts_digest(PLAN.prompts(wc.pset)),
    threads: 2
    resources:
        gpu=1,
    log:
        PLAN.log(f"detection/{PLAN.det_tag}", "{pset}"),
    benchmark:
        PLAN.bench(f"detection/{PLAN.det_tag}", "{pset}")
    shell:
        memprune("detect-scores", f"--model {PLAN.model_dir} --prompts-file {{params.prompts_file}} --name {{wildcards.pset}} "
                 f"{DETECT.args()} --out {{output}}")


rule detection_report:
    conda:
        CONDA_ENV
    input:
        [DETECT.scores(p) for p in DETECT.sets],
    output:
        nc=report(DETECT.targets()[0], category="Detection", caption="../report/detection.rst"),
        csv=report(DETECT.targets()[1], category="Detection", caption="../report/detection.rst"),
    log:
        PLAN.log("detection", "report"),
    shell:
        memprune("detection-report", f"--scores {{input}} --positive {','.join(DETECT.positive)} --out {{output.nc}} "
                 "--csv {output.csv}")


checkpoint detected_prompts:
    conda:
        CONDA_ENV
    input:
        lambda wc: [DETECT.scores(p) for p in PLAN.sets[wc.pset].detect_from],
    output:
        f"{DETECT.dir}/detected/{{pset}}.txt",
    params:
        top_k=lambda wc: PLAN.sets[wc.pset].size,
    log:
        PLAN.log(f"detection/{PLAN.det_tag}", "detected_{pset}"),
    shell:
        memprune("detect-top-k", "--scores {input} --top-k {params.top_k} --out {output}")


# ---------------------------------------------------------------------------------------------- recovery
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


# ---------------------------------------------------------------------------------------------- adversarial
# Adversarial fine-tuning (mitigate/adversarial.py), the registry variant `adversarial`: trained once per model
# when a compared variant list names it; evaluation, the attack and the recovery attack load its checkpoint.
if ADVERSARIAL.enabled:

    rule adversarial_finetune:
        conda:
            CONDA_ENV
        input:
            model=model_input(),
            data=ADVERSARIAL.truth_inputs(),
        output:
            directory(ADVERSARIAL.output),
        params:
            spec=ADVERSARIAL.spec_json(),
            truth=ADVERSARIAL.truth_args(),
        threads: 2
        resources:
            gpu=1,  # runs the model (workflow/profiles/slurm sizes it)
        log:
            PLAN.log("adversarial", PLAN.trained_tag()),
        benchmark:
            PLAN.bench("adversarial", PLAN.trained_tag())
        shell:
            memprune("adversarial-finetune", f"--model {PLAN.model_dir} {{params.truth}} {ADVERSARIAL.args()} "
                     f"--spec {{params.spec:q}}{COPY_SSCD} --no-progress --out {{output}}")
