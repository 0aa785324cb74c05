# Pruned checkpoints (the paper's section 5.2): per subset, the base model with the union mask's ff.net.2
# weights zeroed. A checkpoint holds only the edited weights (safetensors) and a manifest naming its base by
# content hash; `memprune.prune.load_pruned_pipeline(dir)` rebuilds the pipeline.

rule prune:
    conda:
        "../envs/memprune.yaml"
    input:
        model=model_input(),
        masks=f"{MASK_DIR}/{{collection}}/{{subset}}.zarr",
    output:
        directory(f"{MODEL_RESULTS}/pruned/{MASK_TAG}/{{collection}}/{{subset}}"),
    params:
        model=MODEL_DIR,
    log:
        f"logs/{MODEL['name']}/prune/{MASK_TAG}/{{collection}}_{{subset}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/prune/{MASK_TAG}/{{collection}}_{{subset}}.tsv"
    shell:
        "python -m memprune --log {log} prune --model {params.model} --masks {input.masks} --out {output} 2>> {log}"
