# Memorization detection (Wen et al. 2024) and its closed loop: a prompt set given as {detect_from, top_k} is the
# top-k scored prompts of a pool, written by the checkpoint `detected_prompts`, and localization, pruning,
# evaluation and the attack run on it.
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
