# Extraction attack (Carlini et al. 2023; the paper's section 5.4, Table 1) on every model the plan compares
# (the registry's variants: unedited, pruned by a localizer, Wen, ...): generation + tiled distances per (model,
# prompt set, chunk of prompts) are cached under attack/cache/<attack tag>/<model path>/; the thresholds only
# touch the cheap per-model analysis.
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
