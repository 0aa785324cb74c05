# Localization: every localizer of config `localizers` (workflow/memprune/localize/) on every subset of each
# collection, one job per (method, collection) writing one mask store per subset; paths carry the method and its
# parameters (masks/<method>/<tag>/<collection>/<i>.zarr). Pruned checkpoints (the common edit path,
# memprune.edits) are made per subset when evaluation or the attack asks for them.


rule masks:
    conda:
        CONDA_ENV
    input:
        unpack(mask_inputs),
        model=model_input(),
    output:
        directory(f"{PLAN.results}/masks/{{method}}/{{mtag}}/{{collection}}"),
    params:
        params=lambda wc: json.dumps(PLAN.methods[wc.method].params),
        n=lambda wc: len(PLAN.collections[wc.collection].subsets),
        inputs=lambda wc, input: " ".join(f"--{k} {v}" for k, v in input.items() if k != "model"),
    log:
        PLAN.log("masks/{method}/{mtag}", "{collection}"),
    benchmark:
        PLAN.bench("masks/{method}/{mtag}", "{collection}")
    shell:
        memprune("locate", f"--model {PLAN.model_dir} --method {{wildcards.method}} --params {{params.params:q}} "
                 f"--collection {{wildcards.collection}} --n-subsets {{params.n}} {{params.inputs}} "
                 f"--variant {config['activations']['variant']} --out {{output}}")


rule prune:
    conda:
        CONDA_ENV
    input:
        model=model_input(),
        masks=f"{PLAN.results}/masks/{{method}}/{{mtag}}/{{collection}}",
    output:
        directory(f"{PLAN.results}/pruned/{{method}}/{{mtag}}/{{collection}}/{{subset}}"),
    log:
        PLAN.log("prune/{method}/{mtag}", "{collection}_{subset}"),
    benchmark:
        PLAN.bench("prune/{method}/{mtag}", "{collection}_{subset}")
    shell:
        memprune("prune", f"--model {PLAN.model_dir} --masks {{input.masks}}/{{wildcards.subset}}.zarr --out {{output}}")
