# Edits of the model, each a checkpoint the evaluation, the attacks and the leaderboard load: pruned models (a
# localizer's mask of one subset zeroed, the common edit path memprune.formats.edits), made per subset when a
# stage asks for them, and adversarial fine-tuning. (Inference-time mitigations, Wen's, Ren's and Jain's, edit no
# weights: the registry's variants run them inside evaluation and the attacks.)


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


# Adversarial fine-tuning (mitigate/adversarial.py), the registry variant `adversarial`: trained once per model
# when a compared variant list names it; evaluation, the attack and the recovery attack load its checkpoint.
if ADVERSARIAL.enabled:

    rule adversarial_finetune:
        conda:
            CONDA_ENV
        input:
            model=model_input(),
            data=ADVERSARIAL.truth_inputs(),
        output:
            directory(ADVERSARIAL.output),
        params:
            spec=ADVERSARIAL.spec_json(),
            truth=ADVERSARIAL.truth_args(),
        threads: 2
        resources:
            gpu=1,  # runs the model (workflow/profiles/slurm sizes it)
        log:
            PLAN.log("adversarial", PLAN.trained_tag()),
        benchmark:
            PLAN.bench("adversarial", PLAN.trained_tag())
        shell:
            memprune("adversarial-finetune", f"--model {PLAN.model_dir} {{params.truth}} {ADVERSARIAL.args()} "
                     f"--spec {{params.spec:q}}{COPY_SSCD} --no-progress --out {{output}}")
