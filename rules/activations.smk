# Activation capture: one sampling run per distinct prompt (in chunks of a prompt set) plus one null-prompt
# run; per-subset stores are gathered from the chunks, so a new subset or collection of seen prompts
# schedules no sampling job.
rule capture_chunk:
    conda:
        "../envs/memprune.yaml"
    input:
        model_input(),
    output:
        directory(f"{ACT_DIR}/{{pset}}/chunk{{chunk}}.zarr"),
    params:
        model=MODEL_DIR,
        prompts_file=lambda wc: PROMPT_FILES[wc.pset],
        start=lambda wc: int(wc.chunk) * CHUNK,
        stop=lambda wc: (int(wc.chunk) + 1) * CHUNK,
        digest=lambda wc: prompts_digest(chunk_prompts(wc.pset, wc.chunk)),
        sampling=sampling_args(),
        seed=S["seed"],
        variant=A_CFG["variant"],
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/capture/{ACT_TAG}/{{pset}}_chunk{{chunk}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/capture/{ACT_TAG}/{{pset}}_chunk{{chunk}}.tsv"
    shell:
        "python -m memprune --log {log} capture --model {params.model} --prompts-file {params.prompts_file} "
        "--start {params.start} --stop {params.stop} --seed {params.seed} --variant {params.variant} "
        "{params.sampling} --out {output} 2>> {log}"


rule capture_null:
    conda:
        "../envs/memprune.yaml"
    input:
        model_input(),
    output:
        directory(f"{ACT_DIR}/null.zarr"),
    params:
        model=MODEL_DIR,
        sampling=sampling_args(),
        seed=S["seed"],
        variant=A_CFG["variant"],
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/capture/{ACT_TAG}/null.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/capture/{ACT_TAG}/null.tsv"
    shell:
        "python -m memprune --log {log} capture --model {params.model} --null --seed {params.seed} --variant {params.variant} "
        "{params.sampling} --out {output} 2>> {log}"


rule subset_activations:
    conda:
        "../envs/memprune.yaml"
    input:
        subset_chunks,
    output:
        directory(f"{ACT_DIR}/subsets/{{collection}}/{{subset}}.zarr"),
    params:
        prompts=lambda wc: json.dumps(subset_prompts(wc.collection, wc.subset)),
    log:
        f"logs/{MODEL['name']}/subsets/{ACT_TAG}/{{collection}}_{{subset}}.log",
    shell:
        "python -m memprune --log {log} gather --chunks {input} --prompts-json {params.prompts:q} --out {output} 2>> {log}"
