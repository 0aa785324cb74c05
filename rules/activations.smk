# Activation capture: one sampling run per distinct prompt (in chunks of a prompt set) plus one null-prompt
# run, storing only what the localizers read; then each collection's subsets gathered from the chunks, so a new
# subset or collection of seen prompts schedules no sampling job.


rule capture_chunk:
    conda:
        CONDA_ENV
    input:
        model_input(),
    output:
        directory(PLAN.chunk_store("{pset}", "{chunk}")),
    params:
        prompts_file=lambda wc: PLAN.sets[wc.pset].file,
        start=lambda wc: int(wc.chunk) * PLAN.chunk_size(),
        stop=lambda wc: (int(wc.chunk) + 1) * PLAN.chunk_size(),
        digest=lambda wc: prompts_digest(PLAN.chunk_prompts(wc.pset, int(wc.chunk))),  # reruns when prompts change
    resources:
        gpu=1,
    log:
        PLAN.log(f"capture/{PLAN.act_tag}", "{pset}_chunk{chunk}"),
    benchmark:
        PLAN.capture_bench("{pset}", "{chunk}")
    shell:
        memprune("capture", f"--model {PLAN.model_dir} --prompts-file {{params.prompts_file}} --start {{params.start}} "
                 f"--stop {{params.stop}} --seed {config['sampling']['seed']} --variant {config['activations']['variant']} "
                 f"{PLAN.sampling_args()} --out {{output}}")


rule capture_null:
    conda:
        CONDA_ENV
    input:
        model_input(),
    output:
        directory(f"{PLAN.act_dir}/null.zarr"),
    resources:
        gpu=1,
    log:
        PLAN.log(f"capture/{PLAN.act_tag}", "null"),
    benchmark:
        PLAN.capture_bench(None)
    shell:
        memprune("capture", f"--model {PLAN.model_dir} --null --seed {config['sampling']['seed']} "
                 f"--variant {config['activations']['variant']} {PLAN.sampling_args()} --out {{output}}")


rule gather_subsets:
    conda:
        CONDA_ENV
    input:
        collection_chunks,
    output:
        directory(PLAN.gathered("{collection}")),
    params:
        prompts_file=lambda wc: PLAN.sets[PLAN.collections[wc.collection].set].file,
        subsets=lambda wc: PLAN.subsets_json(wc.collection),
    log:
        PLAN.log(f"subsets/{PLAN.act_tag}", "{collection}"),
    benchmark:
        PLAN.bench(f"subsets/{PLAN.act_tag}", "{collection}")
    shell:
        memprune("gather", "--chunks {input} --prompts-file {params.prompts_file} --subsets-json {params.subsets:q} "
                 "--out {output}")
