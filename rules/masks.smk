# Localization: every localizer of config `localizers` (workflow/memprune/localize/) on every subset of each
# collection, one job per (method, collection) writing one mask store per subset, reading the observed weights
# from one file per model (rule model_layers) instead of loading the UNet in each job; paths carry the method and its
# parameters (masks/<method>/<tag>/<collection>/<i>.zarr); rules/mitigate.smk prunes with them.


rule model_layers:
    conda:
        CONDA_ENV
    input:
        model_input(),
    output:
        PLAN.layers_file,
    log:
        PLAN.log("model", "layers"),
    benchmark:
        PLAN.bench("model", "layers")
    shell:
        memprune("layers", f"--model {PLAN.model_dir} --out {{output}}")


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
        localizer=lambda wc: PLAN.methods[wc.method].localizer,
        n=lambda wc: len(PLAN.collections[wc.collection].subsets),
        inputs=lambda wc, input: " ".join(f"--{k} {v}" for k, v in input.items() if k != "model"),
        subsets=lambda wc: f"--subsets-json '{PLAN.subsets_json(wc.collection)}'" if PLAN.methods[wc.method].per_prompt else "",
    log:
        PLAN.log("masks/{method}/{mtag}", "{collection}"),
    benchmark:
        PLAN.bench("masks/{method}/{mtag}", "{collection}")
    shell:
        memprune("locate", f"--model {PLAN.model_dir} --method {{params.localizer}} --params {{params.params:q}} "
                 f"--collection {{wildcards.collection}} --n-subsets {{params.n}} {{params.inputs}} {{params.subsets}} "
                 f"--variant {config['activations']['variant']} --out {{output}}")


# NeMo (a per-prompt localizer): its activation statistics and memorization threshold from non-memorized
# prompts, then its search for every prompt of a set that a collection uses, stored as data; `rule masks` turns the stored
# neurons into one mask store per subset (the union of its prompts' neurons).


rule nemo_calibration:
    conda:
        CONDA_ENV
    priority: 10  # the longest jobs of the default run start first (a shorter makespan on few cores)
    input:
        model_input(),
        prompts=lambda wc: PLAN.calibration_files(wc.method),
    output:
        f"{PLAN.results}/{{method}}/{{mtag}}/calibration.nc",
    params:
        params=lambda wc: json.dumps(PLAN.methods[wc.method].params),
    resources:
        gpu=1,  # runs the model (workflow/profiles/slurm sizes it)
    log:
        PLAN.log("nemo/{method}/{mtag}", "calibration"),
    benchmark:
        PLAN.bench("nemo/{method}/{mtag}", "calibration")
    shell:
        memprune("nemo-calibrate", f"--model {PLAN.model_dir} --prompts-files {{input.prompts}} --params {{params.params:q}} "
                 f"{MODEL_ARGS} --out {{output}}")


rule nemo_search:
    conda:
        CONDA_ENV
    priority: 10  # the longest jobs of the default run start first (a shorter makespan on few cores)
    input:
        model_input(),
        calibration=f"{PLAN.results}/{{method}}/{{mtag}}/calibration.nc",
    output:
        f"{PLAN.results}/{{method}}/{{mtag}}/neurons/{{pset}}/chunk{{chunk}}.nc",  # plan.chunks.nemo_chunk_file
    params:
        params=lambda wc: json.dumps(PLAN.methods[wc.method].params),
        prompts_file=lambda wc: PLAN.sets[wc.pset].file,
        indices=lambda wc: json.dumps(nemo_chunks(PLAN, wc.pset)[int(wc.chunk)]),
    resources:
        gpu=1,  # runs the model (workflow/profiles/slurm sizes it)
    log:
        PLAN.log("nemo/{method}/{mtag}", "{pset}_chunk{chunk}"),
    benchmark:
        PLAN.bench("nemo/{method}/{mtag}", "{pset}_chunk{chunk}")
    shell:
        memprune("nemo", f"--model {PLAN.model_dir} --prompts-file {{params.prompts_file}} --indices {{params.indices:q}} "
                 f"--calibration {{input.calibration}} --params {{params.params:q}} "
                 f"{MODEL_ARGS} --out {{output}}")


rule nemo_neurons:
    conda:
        CONDA_ENV
    input:
        lambda wc: nemo_chunk_files(PLAN, wc.method, wc.pset),
    output:
        f"{PLAN.results}/{{method}}/{{mtag}}/neurons/{{pset}}.nc",
    log:
        PLAN.log("nemo/{method}/{mtag}", "{pset}"),
    benchmark:
        PLAN.bench("nemo/{method}/{mtag}", "{pset}")
    shell:
        memprune("nemo-merge", "--chunks {input} --out {output}")
