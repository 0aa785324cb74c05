# Activation capture: one sampling run per distinct prompt (in chunks of a prompt set) plus one null-prompt
# run; per-subset stores are gathered from the chunks, so a new subset or collection of seen prompts
# schedules no sampling job.
import hashlib


def _digest(prompts):
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


rule capture_chunk:
    input:
        model_input(),
    output:
        directory(f"{ACT_DIR}/{{pset}}/chunk{{chunk}}.zarr"),
    params:
        prompts_file=lambda wc: PROMPT_FILES[wc.pset],
        start=lambda wc: int(wc.chunk) * CHUNK,
        stop=lambda wc: (int(wc.chunk) + 1) * CHUNK,
        digest=lambda wc: _digest(chunk_prompts(wc.pset, wc.chunk)),
        sampling=sampling_args(),
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/capture/{ACT_TAG}/{{pset}}_chunk{{chunk}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/capture/{ACT_TAG}/{{pset}}_chunk{{chunk}}.tsv"
    shell:
        "memprune --log {log} capture --model {MODEL_DIR} --prompts-file {params.prompts_file} "
        "--start {params.start} --stop {params.stop} --seed {S[seed]} --variant {A_CFG[variant]} "
        "{params.sampling} --out {output} 2>> {log}"


rule capture_null:
    input:
        model_input(),
    output:
        directory(f"{ACT_DIR}/null.zarr"),
    params:
        sampling=sampling_args(),
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/capture/{ACT_TAG}/null.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/capture/{ACT_TAG}/null.tsv"
    shell:
        "memprune --log {log} capture --model {MODEL_DIR} --null --seed {S[seed]} --variant {A_CFG[variant]} "
        "{params.sampling} --out {output} 2>> {log}"


rule subset_activations:
    input:
        subset_chunks,
    output:
        directory(f"{ACT_DIR}/subsets/{{collection}}/{{subset}}.zarr"),
    params:
        prompts=lambda wc: json.dumps(subset_prompts(wc.collection, wc.subset)),
    log:
        f"logs/{MODEL['name']}/subsets/{ACT_TAG}/{{collection}}_{{subset}}.log",
    shell:
        "memprune --log {log} gather --chunks {input} --prompts-json {params.prompts:q} --out {output} 2>> {log}"
