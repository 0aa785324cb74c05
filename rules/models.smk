# Models and inputs the workflow builds itself: Stable Diffusion's architectures with random weights
# (memprune.random_model; config/sd15_random.yaml runs every stage on one), and seeded stand-ins for the fetched
# training images of a prompt set (the layout of `memprune fetch-training-images`) for such a model.


rule random_model:
    conda:
        CONDA_ENV
    output:
        directory("results/random_models/{arch}_seed{seed}"),
    wildcard_constraints:
        arch="sd15|sd2",
        seed=r"\d+",
    log:
        "logs/random_models/{arch}_seed{seed}.log",
    benchmark:
        "benchmarks/random_models/{arch}_seed{seed}.tsv"
    shell:
        memprune("make-random-model", "--arch {wildcards.arch} --seed {wildcards.seed} --out {output}")


rule stand_in_images:
    conda:
        CONDA_ENV
    output:
        directory(f"{PLAN.results}/stand_in_images/{{pset}}"),
    params:
        prompts_file=lambda wc: PLAN.sets[wc.pset].file,
    log:
        PLAN.log("stand_in_images", "{pset}"),
    shell:
        memprune("make-stand-in-images", "--prompts-file {params.prompts_file} --root {output}")
