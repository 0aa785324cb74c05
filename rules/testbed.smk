# The embedded testbed: regenerate the synthetic dataset (ground truth for every later step), retrain the
# model (only when asked: the trained copy ships in resources/testbed), and measure what it memorizes.
TESTBED = config["testbed"]


rule testbed_data:
    conda:
        CONDA_ENV
    output:
        directory("results/testbed/data"),
    params:
        spec=json.dumps(TESTBED["dataset"]),
    log:
        "logs/testbed/data.log",
    benchmark:
        "benchmarks/testbed/data.tsv"
    shell:
        memprune("make-dataset", "--spec {params.spec:q} --out {output}")


rule train_testbed:
    conda:
        CONDA_ENV
    input:
        data="results/testbed/data",
        bpe=PLAN.repo_path("resources/clip_bpe/bpe_simple_vocab_16e6.txt.gz"),
    output:
        directory("results/testbed/model"),
    params:
        spec=json.dumps(TESTBED["train"]),
    threads: 2
    resources:
        gpu=1,  # runs the model (workflow/profiles/slurm sizes it)
    log:
        "logs/testbed/train.log",
    benchmark:
        "benchmarks/testbed/train.tsv"
    shell:
        memprune("train-testbed", "--manifest {input.data}/manifest.jsonl --bpe {input.bpe} --spec {params.spec:q} --out {output}")


rule testbed_report:
    conda:
        CONDA_ENV
    priority: 10  # the longest jobs of the default run start first (a shorter makespan on few cores)
    input:
        model=PLAN.model_dir if PLAN.is_testbed else PLAN.repo_path("resources/testbed"),
        data=PLAN.data_dir,
    output:
        report=report(PLAN.report, category="Testbed", caption="../report/testbed.rst"),
        grid=report(f"{PLAN.results}/report_grid.png", category="Testbed", caption="../report/testbed_grid.rst"),
    params:
        seeds=",".join(map(str, TESTBED["report"]["seeds"])),
        guidance=",".join(map(str, TESTBED["report"]["guidance"])),
    resources:
        gpu=1,  # runs the model (workflow/profiles/slurm sizes it)
    log:
        f"logs/{PLAN.name}/testbed_report.log",
    benchmark:
        f"benchmarks/{PLAN.name}/testbed_report.tsv"
    shell:
        memprune("testbed-report", "--model {input.model} --data {input.data} --out {output.report} --grid {output.grid} "
                 f"--seeds {{params.seeds}} --guidance {{params.guidance}} --threshold {TESTBED['report']['copy_threshold']} "
                 f"--max-single {TESTBED['report']['max_single']} --steps {config['sampling']['steps']}")


# A derived testbed (testbed.derived): the base dataset plus its new photos, and (only when asked, with
# testbed.use_retrained: the trained copy ships in resources/) its UNet trained on them.
if PLAN.derived:

    rule extend_testbed_data:
        conda:
            CONDA_ENV
        input:
            "results/testbed/data",
        output:
            directory(PLAN.data_dir),
        params:
            spec=json.dumps(PLAN.derived["added"]),
        log:
            f"logs/{PLAN.name}/data.log",
        benchmark:
            PLAN.bench("data", "extend")
        shell:
            memprune("extend-data", "--data {input} --spec {params.spec:q} --out {output}")

    rule train_derived_testbed:
        conda:
            CONDA_ENV
        input:
            model=PLAN.repo_path(PLAN.derived["base"]),
            data=PLAN.data_dir,
        output:
            directory(f"results/{PLAN.name}/model"),
        params:
            spec=json.dumps(PLAN.derived["train"]),
            command="plant" if PLAN.derived["kind"] == "planted" else "finetune-testbed",
        threads: 2
        resources:
            gpu=1,  # runs the model (workflow/profiles/slurm sizes it)
        log:
            f"logs/{PLAN.name}/train.log",
        benchmark:
            f"benchmarks/{PLAN.name}/train.tsv"
        shell:
            memprune("{params.command}", "--model {input.model} --data {input.data} --spec {params.spec:q} --out {output}")
