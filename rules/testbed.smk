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
    log:
        "logs/testbed/train.log",
    benchmark:
        "benchmarks/testbed/train.tsv"
    shell:
        memprune("train-testbed", "--manifest {input.data}/manifest.jsonl --bpe {input.bpe} --spec {params.spec:q} --out {output}")


rule testbed_report:
    conda:
        CONDA_ENV
    input:
        model=PLAN.model_dir if PLAN.is_testbed else PLAN.repo_path("resources/testbed"),
        data="results/testbed/data",
    output:
        report=report("results/testbed/report.nc", category="Testbed", caption="../report/testbed.rst"),
        grid=report("results/testbed/report_grid.png", category="Testbed", caption="../report/testbed_grid.rst"),
    params:
        seeds=",".join(map(str, TESTBED["report"]["seeds"])),
        guidance=",".join(map(str, TESTBED["report"]["guidance"])),
    log:
        "logs/testbed/report.log",
    benchmark:
        "benchmarks/testbed/report.tsv"
    shell:
        memprune("testbed-report", "--model {input.model} --data {input.data} --out {output.report} --grid {output.grid} "
                 f"--seeds {{params.seeds}} --guidance {{params.guidance}} --threshold {TESTBED['report']['copy_threshold']} "
                 f"--max-single {TESTBED['report']['max_single']} --steps {config['sampling']['steps']}")
