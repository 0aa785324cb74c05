# Extraction attack (Carlini et al. 2023; the paper's section 5.4, Table 1) on the unedited model and on pruned
# models, and memorization detection (Wen et al. 2024) with its closed loop: a prompt set given as
# {detect_from, top_k} (rules/common.smk) is the top-k scored prompts of a pool, written by the checkpoint
# `detected_prompts`, and localization, pruning, evaluation and the attack run on it.
#
# Attack: generation + tiled distances per (variant, prompt set, chunk of prompts) are cached under
# attack/cache/<ATTACK_TAG>/ (pruned variants also under their MASK_TAG); the thresholds only touch the cheap
# per-variant analysis, so changing them regenerates nothing.

rule attack_generate_base:
    conda:
        "../envs/memprune.yaml"
    input:
        model=model_input(),
        data=[TESTBED_DATA] if TESTBED_DATA else [],
    output:
        f"{ATTACK_CACHE}/none/{{pset}}_chunk{{chunk}}.nc",
    params:
        pruned="",
        **_attack_generate_params(),
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/attack/{ATTACK_TAG}/none_{{pset}}_chunk{{chunk}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/attack/{ATTACK_TAG}/none_{{pset}}_chunk{{chunk}}.tsv"
    shell:
        ATTACK_GENERATE_SHELL


rule attack_generate_pruned:
    conda:
        "../envs/memprune.yaml"
    input:
        model=model_input(),
        data=[TESTBED_DATA] if TESTBED_DATA else [],
        checkpoint=lambda wc: pruned_checkpoint(wc.collection, wc.subset),
    output:
        f"{ATTACK_CACHE}/{MASK_TAG}/{{collection}}/{{subset}}/{{pset}}_chunk{{chunk}}.nc",
    params:
        pruned=lambda wc, input: f"--pruned {input.checkpoint}",
        **_attack_generate_params(),
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/attack/{ATTACK_TAG}/{MASK_TAG}_{{collection}}_{{subset}}_{{pset}}_chunk{{chunk}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/attack/{ATTACK_TAG}/{MASK_TAG}_{{collection}}_{{subset}}_{{pset}}_chunk{{chunk}}.tsv"
    shell:
        ATTACK_GENERATE_SHELL


rule attack_analyze:
    conda:
        "../envs/memprune.yaml"
    input:
        lambda wc: attack_chunks(wc.variant),
    output:
        f"{ATTACK_DIR}/{{variant}}.nc",
    wildcard_constraints:
        variant=r"none|pruned_[A-Za-z0-9_-]+_\d+",
    params:
        threshold=ATK["distance_threshold"],
        min_clique=ATK["min_clique"],
        copy_threshold=ATK["copy_threshold"],
        tag=ATTACK_TAG,
        mask_tag=lambda wc: "" if wc.variant == "none" else MASK_TAG,
    log:
        f"logs/{MODEL['name']}/attack/analyze_{{variant}}.log",
    shell:
        "python -m memprune --log {log} attack-analyze --chunks {input} --variant {wildcards.variant} "
        "--threshold {params.threshold} --min-clique {params.min_clique} --copy-threshold {params.copy_threshold} "
        "--out {output} 2>> {log}"


rule attack_table:
    conda:
        "../envs/memprune.yaml"
    input:
        variants=[f"{ATTACK_DIR}/{v}.nc" for v in attack_variants()],
        chunks=[attack_chunks(v)[0] for v in attack_variants()] if ATTACK_SETS else [],
    output:
        table=report(f"{ATTACK_DIR}/table.csv", category="Extraction attack", caption="../report/attack_table.rst"),
        figure=report(f"{MODEL_RESULTS}/figures/attack.png", category="Extraction attack", caption="../report/attack_fig.rst"),
    params:
        chunks=json.dumps({v: attack_chunks(v)[:1] for v in attack_variants()} if ATTACK_SETS else {}),
        data=f"--data {TESTBED_DATA}" if TESTBED_DATA else "",
    log:
        f"logs/{MODEL['name']}/attack/table.log",
    shell:
        "python -m memprune --log {log} attack-table --variants {input.variants} --out {output.table} "
        "--figure {output.figure} --chunks-json {params.chunks:q} {params.data} 2>> {log}"


# ---------------------------------------------------------------------------------------------- detection


rule detection_scores:
    conda:
        "../envs/memprune.yaml"
    input:
        model_input(),
    output:
        f"{DET_DIR}/scores/{{pset}}.nc",
    params:
        model=MODEL_DIR,
        prompts_file=lambda wc: PROMPT_FILES[wc.pset],
        digest=lambda wc: prompts_digest(PROMPTS[wc.pset]),
        args=(f"--n-seeds {DET['n_seeds']} --seed {DET['seed']} --steps {DET['steps']} --score-steps {DET['score_steps']} "
              f"--guidance {DET['guidance']} --batch-size {DET['batch_size']} --device {MODEL['device']} --dtype {MODEL['dtype']}"
              + (f" --scheduler {MODEL['scheduler']}" if MODEL.get("scheduler") else "")),
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/detection/{DET_TAG}/{{pset}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/detection/{DET_TAG}/{{pset}}.tsv"
    shell:
        "python -m memprune --log {log} detect-scores --model {params.model} --prompts-file {params.prompts_file} "
        "--name {wildcards.pset} {params.args} --out {output} 2>> {log}"


rule detection_report:
    conda:
        "../envs/memprune.yaml"
    input:
        [f"{DET_DIR}/scores/{p}.nc" for p in DET_SETS],
    output:
        nc=report(f"{MODEL_RESULTS}/detection.nc", category="Detection", caption="../report/detection.rst"),
        csv=report(f"{MODEL_RESULTS}/detection.csv", category="Detection", caption="../report/detection.rst"),
    params:
        positive=",".join(DET_POSITIVE),
    log:
        f"logs/{MODEL['name']}/detection/report.log",
    shell:
        "python -m memprune --log {log} detection-report --scores {input} --positive {params.positive} "
        "--out {output.nc} --csv {output.csv} 2>> {log}"


checkpoint detected_prompts:
    conda:
        "../envs/memprune.yaml"
    input:
        lambda wc: [f"{DET_DIR}/scores/{p}.nc" for p in DETECTED_SETS[wc.pset]["detect_from"]],
    output:
        f"{DET_DIR}/detected/{{pset}}.txt",
    params:
        top_k=lambda wc: DETECTED_SETS[wc.pset]["top_k"],
    log:
        f"logs/{MODEL['name']}/detection/{DET_TAG}/detected_{{pset}}.log",
    shell:
        "python -m memprune --log {log} detect-top-k --scores {input} --top-k {params.top_k} --out {output} 2>> {log}"
