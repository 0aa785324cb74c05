# Evaluation (the paper's section 5.2, Figures 3 and 4): the unedited model, one pruned model per subset of the
# evaluated collections, and Wen et al.'s inference-time mitigation, each sampled on the test prompts x seeds
# in its own job, scored in its own job, then aggregated with the fair split (a pruned model is tested on the
# memorized prompts outside its subset). Outputs: results/<model>/eval.nc, eval_summary.csv, figures/eval_*.png.

rule eval_sample_baseline:
    conda:
        "../envs/memprune.yaml"
    input:
        model_input(),
    output:
        directory(f"{EVAL_DIR}/samples/{{variant}}"),
    wildcard_constraints:
        variant="none|wen",
    params:
        variant=lambda wc: wc.variant,
        model=MODEL_DIR,
        checkpoint="",
        sampling=sampling_args(),
        seeds=",".join(map(str, EV["seeds"])),
        prompts=eval_prompt_args(),
        wen=lambda wc: WEN_ARGS if wc.variant == "wen" else "",
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/eval/sample_{{variant}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/eval/sample_{{variant}}.tsv"
    shell:
        EVAL_SAMPLE_SHELL


rule eval_sample_pruned:
    conda:
        "../envs/memprune.yaml"
    input:
        model=model_input(),
        checkpoint=lambda wc: pruned_checkpoint(wc.collection, wc.subset),
    output:
        directory(f"{EVAL_DIR}/samples/pruned/{MASK_TAG}/{{collection}}/{{subset}}"),
    params:
        variant="pruned",
        model=MODEL_DIR,
        checkpoint=lambda wc, input: f"--checkpoint {input.checkpoint}",
        sampling=sampling_args(),
        seeds=",".join(map(str, EV["seeds"])),
        prompts=eval_prompt_args(),
        wen="",
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/eval/sample_pruned_{MASK_TAG}_{{collection}}_{{subset}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/eval/sample_pruned_{MASK_TAG}_{{collection}}_{{subset}}.tsv"
    shell:
        EVAL_SAMPLE_SHELL


rule eval_score:
    conda:
        "../envs/memprune.yaml"
    input:
        samples=f"{EVAL_DIR}/samples/{{variant}}",
        **eval_metric_inputs(),
    output:
        f"{EVAL_DIR}/scores/{{variant}}.nc",
    wildcard_constraints:
        variant=r"none|wen|pruned/[^/]+/[A-Za-z0-9_-]+/\d+",
    params:
        metrics=eval_metric_args(),
        memorized=EVAL_MEMORIZED,
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/eval/score/{{variant}}.log",
    shell:
        "python -m memprune --log {log} eval-score --samples {input.samples} --memorized {params.memorized} "
        "{params.metrics} --out {output} 2>> {log}"


rule eval_aggregate:
    conda:
        "../envs/memprune.yaml"
    input:
        scores=[f"{EVAL_DIR}/scores/{p}.nc" for p in eval_variant_paths().values()],
        **eval_metric_inputs(),
    output:
        nc=report(f"{MODEL_RESULTS}/eval.nc", category="Evaluation", caption="../report/eval.rst"),
        summary=report(f"{MODEL_RESULTS}/eval_summary.csv", category="Evaluation", caption="../report/eval.rst"),
        scatter=report(f"{MODEL_RESULTS}/figures/eval_copy_vs_clip.png", category="Evaluation",
                       caption="../report/eval_copy_vs_clip.rst"),
        bars=report(f"{MODEL_RESULTS}/figures/eval_fid_time.png", category="Evaluation",
                    caption="../report/eval_fid_time.rst"),
        grid=report(f"{MODEL_RESULTS}/figures/eval_grid.png", category="Evaluation", caption="../report/eval_grid.rst"),
    params:
        scores=" ".join(f"--score {lb}={EVAL_DIR}/scores/{p}.nc" for lb, p in eval_variant_paths().items()),
        subsets=eval_subsets_json(),
        costs=eval_mask_costs_json(),
        note="for each pruned model: its share of the capture chunks holding its prompts, the null-prompt capture, "
        "its masks job and its prune job (Snakemake benchmark s); files missing are listed in mask_benchmarks_missing",
        threshold=EV["copy_threshold"],
        fid=EV["fid_reference"],
        refimages=repo_path(EV["reference_images"]) if EV.get("reference_images") else None,
        memorized=EVAL_MEMORIZED,
        nonmemorized=EVAL_NONMEMORIZED,
        metrics=eval_metric_args(),
    resources:
        gpu=1 if EV["fid_reference"] == "images" else 0,
    log:
        f"logs/{MODEL['name']}/eval/aggregate.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/eval/aggregate.tsv"
    shell:
        "python -m memprune --log {log} eval-aggregate {params.scores} --subsets-json {params.subsets:q} "
        "--mask-costs-json {params.costs:q} --mask-cost-note {params.note:q} --copy-threshold {params.threshold} "
        "--fid-reference {params.fid} --reference-images {params.refimages} --memorized {params.memorized} "
        "--nonmemorized {params.nonmemorized} {params.metrics} --out {output.nc} --summary {output.summary} "
        "--fig-scatter {output.scatter} --fig-bars {output.bars} --fig-grid {output.grid} 2>> {log}"


rule train_clip:
    conda:
        "../envs/memprune.yaml"
    input:
        data="results/testbed/data",
    output:
        directory("results/testbed/clip"),
    params:
        spec=json.dumps(EV["clip"]["train"]),
    threads: 1
    log:
        "logs/testbed/train_clip.log",
    benchmark:
        "benchmarks/testbed/train_clip.tsv"
    shell:
        "python -m memprune --log {log} train-clip --data {input.data} --spec {params.spec:q} --out {output} "
        "--no-progress 2>> {log}"
