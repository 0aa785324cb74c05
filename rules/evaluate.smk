# Evaluation (the paper's section 5.2, Figures 3 and 4): every compared model of the plan (the registry's
# variants: the unedited model, pruned models of each evaluated localizer and subset, Wen et al.'s mitigation,
# ...) is sampled on the test prompts x seeds in its own job, scored in its own job, then aggregated with the fair
# split (a pruned model is tested on the memorized prompts outside its subset).
EVAL_MODELS = EVAL.by_path()


rule eval_sample:
    conda:
        CONDA_ENV
    input:
        unpack(checkpoint_input(EVAL_MODELS, "evalmodel")),
        model=model_input(),
    output:
        directory(f"{EVAL.dir}/samples/{{evalmodel}}"),
    wildcard_constraints:
        evalmodel=_alternatives(EVAL_MODELS),
    params:
        variant=lambda wc, input: PLAN.variant_args(EVAL_MODELS[wc.evalmodel], input.get("checkpoint")),
    threads: 2
    resources:
        gpu=1,
    log:
        PLAN.log("eval/sample", "{evalmodel}"),
    benchmark:
        PLAN.bench("eval/sample", "{evalmodel}")
    shell:
        memprune("eval-sample", f"{{params.variant}} --model {PLAN.model_dir} {PLAN.sampling_args()} "
                 f"--seeds {','.join(map(str, EVAL.cfg['seeds']))} {EVAL.prompt_args()} --out {{output}}")


rule eval_score:
    conda:
        CONDA_ENV
    input:
        samples=f"{EVAL.dir}/samples/{{evalmodel}}",
        **EVAL.metric_inputs(),
    output:
        f"{EVAL.dir}/scores/{{evalmodel}}.nc",
    wildcard_constraints:
        evalmodel=_alternatives(EVAL_MODELS),
    resources:
        gpu=1,
    log:
        PLAN.log("eval/score", "{evalmodel}"),
    benchmark:
        PLAN.bench("eval/score", "{evalmodel}")
    shell:
        memprune("eval-score", f"--samples {{input.samples}} {options(memorized=EVAL.memorized)} {EVAL.metric_args()} "
                 "--out {output}")


rule eval_aggregate:
    conda:
        CONDA_ENV
    input:
        scores=[EVAL.scores(m) for m in EVAL.models],
        **EVAL.metric_inputs(),
    output:
        nc=report(EVAL.targets()[0], category="Evaluation", caption="../report/eval.rst"),
        summary=report(EVAL.targets()[1], category="Evaluation", caption="../report/eval.rst"),
        scatter=report(EVAL.targets()[2], category="Evaluation", caption="../report/eval_copy_vs_clip.rst"),
        bars=report(EVAL.targets()[3], category="Evaluation", caption="../report/eval_fid_time.rst"),
        grid=report(EVAL.targets()[4], category="Evaluation", caption="../report/eval_grid.rst"),
    params:
        models=EVAL.models_json(),
        note="for each pruned model: its share of the capture chunks holding its prompts, the null-prompt capture, "
        "its share of its collection's masks job and its prune job (Snakemake benchmark s); files missing are listed "
        "in mask_benchmarks_missing",
        options=options(reference_images=PLAN.repo_path(EVAL.cfg["reference_images"]) if EVAL.cfg.get("reference_images") else None,
                        nonmemorized=EVAL.nonmemorized,
                        report_thresholds=",".join(map(str, EVAL.cfg["report_thresholds"])) or None),
    resources:
        gpu=1 if EVAL.cfg["fid_reference"] == "images" else 0,
    log:
        PLAN.log("eval", "aggregate"),
    benchmark:
        PLAN.bench("eval", "aggregate")
    shell:
        memprune("eval-aggregate", f"--models-json {{params.models:q}} --mask-cost-note {{params.note:q}} "
                 f"--copy-threshold {EVAL.cfg['copy_threshold']} --fid-reference {EVAL.cfg['fid_reference']} "
                 f"{options(memorized=EVAL.memorized)} {{params.options}} {EVAL.metric_args()} --out {{output.nc}} "
                 "--summary {output.summary} --fig-scatter {output.scatter} --fig-bars {output.bars} --fig-grid {output.grid}")


rule train_clip:
    conda:
        CONDA_ENV
    input:
        data="results/testbed/data",
    output:
        directory("results/testbed/clip"),
    params:
        spec=json.dumps(EVAL.cfg["clip"]["train"]),
    threads: 1
    log:
        "logs/testbed/train_clip.log",
    benchmark:
        "benchmarks/testbed/train_clip.tsv"
    shell:
        memprune("train-clip", "--data {input.data} --spec {params.spec:q} --out {output} --no-progress")
