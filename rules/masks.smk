# Memorized-neuron masks per subset (the paper's equations 4-7): per (layer, timestep) and their union over
# the first tau timesteps.


rule masks:
    conda:
        "../envs/memprune.yaml"
    input:
        model=model_input(),
        subset=f"{ACT_DIR}/subsets/{{collection}}/{{subset}}.zarr",
        null=f"{ACT_DIR}/null.zarr",
    output:
        directory(f"{MASK_DIR}/{{collection}}/{{subset}}.zarr"),
    params:
        model=MODEL_DIR,
        sparsity=config["masks"]["sparsity"],
        tau=config["masks"]["tau"],
        variant=A_CFG["variant"],
    log:
        f"logs/{MODEL['name']}/masks/{MASK_TAG}/{{collection}}_{{subset}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/masks/{MASK_TAG}/{{collection}}_{{subset}}.tsv"
    shell:
        "python -m memprune --log {log} masks --model {params.model} --activations {input.subset} --null {input.null} "
        "--sparsity {params.sparsity} --tau {params.tau} --variant {params.variant} --out {output} 2>> {log}"
