# Evaluation (the paper's section 5.2, Figures 3 and 4): the unedited model, one pruned model per subset of the
# evaluated collections, and Wen et al.'s inference-time mitigation, each sampled on the test prompts x seeds
# in its own job, scored in its own job, then aggregated with the fair split (a pruned model is tested on the
# memorized prompts outside its subset). Outputs: results/<model>/eval.nc, eval_summary.csv, figures/eval_*.png.

EV = config["evaluate"]
# Wen et al.'s settings: config mitigation.wen when given, else the command's defaults (memprune.sampling's).
WEN_ARGS = " ".join(f"--wen-{k.replace('_', '-')} {v}" for k, v in config.get("mitigation", {}).get("wen", {}).items()
                    if k in ("lr", "max_iters", "target_loss"))
EVAL_DIR = f"{MODEL_RESULTS}/eval/steps{S['steps']}_g{S['guidance']}"
EVAL_COLLECTIONS = EV["collections"] or [c for c, spec in config["collections"].items() if not spec.get("control")][:1]
_EVAL_SET = EV["memorized"] or (config["collections"][EVAL_COLLECTIONS[0]]["set"] if EVAL_COLLECTIONS else None)
EVAL_MEMORIZED = PROMPT_FILES.get(_EVAL_SET) or (repo_path(_EVAL_SET) if _EVAL_SET else None)
EVAL_NONMEMORIZED = repo_path(EV["nonmemorized"]) if EV.get("nonmemorized") else None
EVAL_DATA = "results/testbed/data" if IS_TESTBED and not EV.get("ground_truth") else None
CLIP_DIR = "results/testbed/clip" if EV["clip"].get("use_retrained") else repo_path(EV["clip"]["weights"] or "")


def eval_subsets():
    """{"<collection>/<i>": (collection, i)} of the pruned models evaluated (at most evaluate.max_subsets each)."""
    out = {}
    for c in EVAL_COLLECTIONS:
        if c not in config["collections"]:
            raise ValueError(f"config key evaluate.collections: unknown collection {c!r}; known: {sorted(config['collections'])}")
        n = len(SUBSETS[c]) if EV.get("max_subsets") is None else min(len(SUBSETS[c]), EV["max_subsets"])
        out.update({f"{c}/{i}": (c, i) for i in range(n)})
    return out


def eval_variant_paths():
    """{variant label: its path under samples/ and scores/}: none, wen, and one per pruned model."""
    paths = {}
    paths["none"] = "none"  # the unedited model: every comparison's reference, always evaluated
    if "pruned" in EV["variants"]:
        paths.update({lb: f"pruned/{MASK_TAG}/{c}/{i}" for lb, (c, i) in eval_subsets().items()})
    if "wen" in EV["variants"]:
        paths["wen"] = "wen"
    return paths


def eval_subsets_json():
    return json.dumps({lb: {"file": PROMPT_FILES[config["collections"][c]["set"]],
                            "indices": [int(k) for k in SUBSETS[c][i]]} for lb, (c, i) in eval_subsets().items()})


def eval_mask_costs_json():
    """Per pruned model, the Snakemake benchmark files of what its mask cost, with the share that is its own:
    the capture chunks holding its prompts (in proportion of its prompts in each chunk), the null-prompt
    capture (whole), its mask job and its prune job."""
    bench = f"benchmarks/{MODEL['name']}"
    costs = {}
    for lb, (c, i) in eval_subsets().items():
        pset = config["collections"][c]["set"]
        indices = [int(k) for k in SUBSETS[c][i]]
        parts = []
        for chunk in sorted({k // CHUNK for k in indices}):
            in_chunk = sum(1 for k in indices if k // CHUNK == chunk)
            parts.append([f"{bench}/capture/{ACT_TAG}/{pset}_chunk{chunk}.tsv", in_chunk / len(chunk_prompts(pset, chunk))])
        parts.append([f"{bench}/capture/{ACT_TAG}/null.tsv", 1.0])
        parts.append([f"{bench}/masks/{MASK_TAG}/{c}_{i}.tsv", 1.0])
        parts.append([f"{bench}/prune/{MASK_TAG}/{c}_{i}.tsv", 1.0])
        costs[lb] = parts
    return json.dumps(costs)


def eval_prompt_args():
    return (f"--memorized {EVAL_MEMORIZED} --max-memorized {EV['max_memorized']} "
            f"--nonmemorized {EVAL_NONMEMORIZED} --max-nonmemorized {EV['max_nonmemorized']}")


def eval_metric_args():
    clip = EV["clip"]
    args = (f"--data {EVAL_DATA} --ground-truth {repo_path(EV['ground_truth']) if EV.get('ground_truth') else None} "
            f"--sscd {repo_path(EV['sscd']) if EV.get('sscd') else None} --clip-name {clip.get('name')} "
            f"--inception {repo_path(EV['inception']) if EV.get('inception') else None} --device {MODEL['device']}")
    return args + (f" --clip-weights {CLIP_DIR}" if CLIP_DIR else "")


def eval_metric_inputs():
    """Local files the scores depend on (the dataset, the CLIP folder or file when it exists here)."""
    inputs = {}
    if EVAL_DATA:
        inputs["data"] = EVAL_DATA
    if EV["clip"].get("use_retrained") or (CLIP_DIR and Path(CLIP_DIR).exists()):
        inputs["clip"] = CLIP_DIR
    return inputs


def eval_targets():
    return [f"{MODEL_RESULTS}/eval.nc", f"{MODEL_RESULTS}/eval_summary.csv",
            f"{MODEL_RESULTS}/figures/eval_copy_vs_clip.png", f"{MODEL_RESULTS}/figures/eval_fid_time.png",
            f"{MODEL_RESULTS}/figures/eval_grid.png"]


EVAL_SAMPLE_SHELL = (
    "python -m memprune --log {log} eval-sample --variant {params.variant} --model {params.model} {params.checkpoint} "
    "{params.sampling} --seeds {params.seeds} {params.prompts} {params.wen} --out {output} 2>> {log}"
)


rule eval_sample_baseline:
    conda:
        "../envs/memprune.yaml"
    input:
        model_input(),
    output:
        directory(f"{EVAL_DIR}/samples/{{variant}}"),
    wildcard_constraints:
        variant="none|wen",
    params:
        variant=lambda wc: wc.variant,
        model=MODEL_DIR,
        checkpoint="",
        sampling=sampling_args(),
        seeds=",".join(map(str, EV["seeds"])),
        prompts=eval_prompt_args(),
        wen=lambda wc: WEN_ARGS if wc.variant == "wen" else "",
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/eval/sample_{{variant}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/eval/sample_{{variant}}.tsv"
    shell:
        EVAL_SAMPLE_SHELL


rule eval_sample_pruned:
    conda:
        "../envs/memprune.yaml"
    input:
        model=model_input(),
        checkpoint=lambda wc: pruned_checkpoint(wc.collection, wc.subset),
    output:
        directory(f"{EVAL_DIR}/samples/pruned/{MASK_TAG}/{{collection}}/{{subset}}"),
    params:
        variant="pruned",
        model=MODEL_DIR,
        checkpoint=lambda wc, input: f"--checkpoint {input.checkpoint}",
        sampling=sampling_args(),
        seeds=",".join(map(str, EV["seeds"])),
        prompts=eval_prompt_args(),
        wen="",
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/eval/sample_pruned_{MASK_TAG}_{{collection}}_{{subset}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/eval/sample_pruned_{MASK_TAG}_{{collection}}_{{subset}}.tsv"
    shell:
        EVAL_SAMPLE_SHELL


rule eval_score:
    conda:
        "../envs/memprune.yaml"
    input:
        samples=f"{EVAL_DIR}/samples/{{variant}}",
        **eval_metric_inputs(),
    output:
        f"{EVAL_DIR}/scores/{{variant}}.nc",
    wildcard_constraints:
        variant=r"none|wen|pruned/[^/]+/[A-Za-z0-9_-]+/\d+",
    params:
        metrics=eval_metric_args(),
        memorized=EVAL_MEMORIZED,
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/eval/score/{{variant}}.log",
    shell:
        "python -m memprune --log {log} eval-score --samples {input.samples} --memorized {params.memorized} "
        "{params.metrics} --out {output} 2>> {log}"


rule eval_aggregate:
    conda:
        "../envs/memprune.yaml"
    input:
        scores=[f"{EVAL_DIR}/scores/{p}.nc" for p in eval_variant_paths().values()],
        **eval_metric_inputs(),
    output:
        nc=report(f"{MODEL_RESULTS}/eval.nc", category="Evaluation", caption="../report/eval.rst"),
        summary=report(f"{MODEL_RESULTS}/eval_summary.csv", category="Evaluation", caption="../report/eval.rst"),
        scatter=report(f"{MODEL_RESULTS}/figures/eval_copy_vs_clip.png", category="Evaluation",
                       caption="../report/eval_copy_vs_clip.rst"),
        bars=report(f"{MODEL_RESULTS}/figures/eval_fid_time.png", category="Evaluation",
                    caption="../report/eval_fid_time.rst"),
        grid=report(f"{MODEL_RESULTS}/figures/eval_grid.png", category="Evaluation", caption="../report/eval_grid.rst"),
    params:
        scores=" ".join(f"--score {lb}={EVAL_DIR}/scores/{p}.nc" for lb, p in eval_variant_paths().items()),
        subsets=eval_subsets_json(),
        costs=eval_mask_costs_json(),
        note="for each pruned model: its share of the capture chunks holding its prompts, the null-prompt capture, "
        "its masks job and its prune job (Snakemake benchmark s); files missing are listed in mask_benchmarks_missing",
        threshold=EV["copy_threshold"],
        fid=EV["fid_reference"],
        refimages=repo_path(EV["reference_images"]) if EV.get("reference_images") else None,
        memorized=EVAL_MEMORIZED,
        nonmemorized=EVAL_NONMEMORIZED,
        metrics=eval_metric_args(),
    resources:
        gpu=1 if EV["fid_reference"] == "images" else 0,
    log:
        f"logs/{MODEL['name']}/eval/aggregate.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/eval/aggregate.tsv"
    shell:
        "python -m memprune --log {log} eval-aggregate {params.scores} --subsets-json {params.subsets:q} "
        "--mask-costs-json {params.costs:q} --mask-cost-note {params.note:q} --copy-threshold {params.threshold} "
        "--fid-reference {params.fid} --reference-images {params.refimages} --memorized {params.memorized} "
        "--nonmemorized {params.nonmemorized} {params.metrics} --out {output.nc} --summary {output.summary} "
        "--fig-scatter {output.scatter} --fig-bars {output.bars} --fig-grid {output.grid} 2>> {log}"


rule train_clip:
    conda:
        "../envs/memprune.yaml"
    input:
        data="results/testbed/data",
    output:
        directory("results/testbed/clip"),
    params:
        spec=json.dumps(EV["clip"]["train"]),
    threads: 1
    log:
        "logs/testbed/train_clip.log",
    benchmark:
        "benchmarks/testbed/train_clip.tsv"
    shell:
        "python -m memprune --log {log} train-clip --data {input.data} --spec {params.spec:q} --out {output} "
        "--no-progress 2>> {log}"
