# The embedded testbed: regenerate the synthetic dataset (ground truth for every later step), retrain the
# model (only when asked: the trained copy ships in resources/testbed), and measure what it memorizes.

TB = config["testbed"]


rule testbed_data:
    conda:
        "../envs/memprune.yaml"
    output:
        directory("results/testbed/data"),
    params:
        spec=json.dumps(TB["dataset"]),
    log:
        "logs/testbed/data.log",
    shell:
        "python -m memprune --log {log} make-dataset --spec {params.spec:q} --out {output} 2>> {log}"


rule train_testbed:
    conda:
        "../envs/memprune.yaml"
    input:
        data="results/testbed/data",
        bpe=repo_path("resources/clip_bpe/bpe_simple_vocab_16e6.txt.gz"),
    output:
        directory("results/testbed/model"),
    params:
        spec=json.dumps(TB["train"]),
    threads: 2
    log:
        "logs/testbed/train.log",
    benchmark:
        "benchmarks/testbed/train.tsv"
    shell:
        "python -m memprune --log {log} train-testbed --manifest {input.data}/manifest.jsonl --bpe {input.bpe} "
        "--spec {params.spec:q} --out {output} 2>> {log}"


rule testbed_report:
    conda:
        "../envs/memprune.yaml"
    input:
        model=MODEL_DIR if IS_TESTBED else repo_path("resources/testbed"),
        data="results/testbed/data",
    output:
        report=report("results/testbed/report.nc", category="Testbed", caption="../report/testbed.rst"),
        grid=report("results/testbed/report_grid.png", category="Testbed", caption="../report/testbed_grid.rst"),
    params:
        seeds=",".join(map(str, TB["report"]["seeds"])),
        guidance=",".join(map(str, TB["report"]["guidance"])),
        threshold=TB["report"]["copy_threshold"],
        max_single=TB["report"]["max_single"],
        steps=S["steps"],
    log:
        "logs/testbed/report.log",
    benchmark:
        "benchmarks/testbed/report.tsv"
    shell:
        "python -m memprune --log {log} testbed-report --model {input.model} --data {input.data} --out {output.report} "
        "--grid {output.grid} --seeds {params.seeds} --guidance {params.guidance} "
        "--threshold {params.threshold} --max-single {params.max_single} --steps {params.steps} 2>> {log}"
