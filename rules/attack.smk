# Extraction attack (Carlini et al. 2023; the paper's section 5.4, Table 1) on the unedited model and on pruned
# models, and memorization detection (Wen et al. 2024) with its closed loop: a prompt set given as
# {detect_from, top_k} (rules/common.smk) is the top-k scored prompts of a pool, written by the checkpoint
# `detected_prompts`, and localization, pruning, evaluation and the attack run on it.
#
# Attack: generation + tiled distances per (variant, prompt set, chunk of prompts) are cached under
# attack/cache/<ATTACK_TAG>/ (pruned variants also under their MASK_TAG); the thresholds only touch the cheap
# per-variant analysis, so changing them regenerates nothing.

import re

ATK = config["attack"]
ATTACK_TAG = f"n{ATK['n_samples']}_seed{ATK['seed']}_steps{ATK['steps']}_g{ATK['guidance']}_grid{ATK['tile_grid']}"
ATTACK_DIR = f"{MODEL_RESULTS}/attack"
ATTACK_CACHE = f"{ATTACK_DIR}/cache/{ATTACK_TAG}"
TESTBED_DATA = "results/testbed/data" if IS_TESTBED else None
_FIRST_MEMORIZED = next((c for c, spec in config["collections"].items() if not spec.get("control")), None)


def _file_sets(key, names):
    bad = [n for n in names if n not in PROMPT_FILES or n in DETECTED_SETS]
    if bad:
        raise ValueError(f"config key {key}: {bad} are not prompt sets read from files; "
                         f"known: {sorted(set(PROMPT_FILES) - set(DETECTED_SETS))}")
    return list(names)


ATTACK_SETS = _file_sets("attack.candidates", ATK["candidates"] or (
    [config["collections"][_FIRST_MEMORIZED]["set"]] if _FIRST_MEMORIZED and
    config["collections"][_FIRST_MEMORIZED]["set"] not in DETECTED_SETS else []))
DET_SETS = _file_sets("detection.candidates", DET["candidates"] or [n for n in PROMPT_FILES if n not in DETECTED_SETS])
DET_POSITIVE = DET["positive"] or list(dict.fromkeys(
    spec["set"] for spec in config["collections"].values() if not spec.get("control") and spec["set"] in DET_SETS))
if not set(DET_POSITIVE) <= set(DET_SETS):
    raise ValueError(f"config key detection.positive: {sorted(set(DET_POSITIVE) - set(DET_SETS))} are not in "
                     f"detection.candidates {DET_SETS}")


def attack_variants():
    """{variant: None (the unedited model) or (collection, subset)}, in table order."""
    out = {"none": None}
    pruned = ATK["pruned"] if ATK["pruned"] is not None else ({_FIRST_MEMORIZED: [0]} if _FIRST_MEMORIZED else {})
    for c, subsets in pruned.items():
        if c not in config["collections"]:
            raise ValueError(f"config key attack.pruned: unknown collection {c!r}; known: {sorted(config['collections'])}")
        for i in subsets:
            if i >= len(SUBSETS[c]):
                raise ValueError(f"config key attack.pruned.{c}: subset {i} out of range (the collection has {len(SUBSETS[c])})")
            out[f"pruned_{c}_{i}"] = (c, int(i))
    return out


def _variant_dir(variant):
    if variant == "none":
        return f"{ATTACK_CACHE}/none"
    c, i = re.fullmatch(r"pruned_(.+)_(\d+)", variant).groups()
    return f"{ATTACK_CACHE}/{MASK_TAG}/{c}/{i}"


def attack_chunks(variant):
    n = ATK["chunk_size"]
    return [f"{_variant_dir(variant)}/{pset}_chunk{k}.nc" for pset in ATTACK_SETS
            for k in range((len(PROMPTS[pset]) + n - 1) // n)]


def attack_targets():
    return [f"{ATTACK_DIR}/table.csv", f"{MODEL_RESULTS}/figures/attack.png"]


def detection_targets():
    return [f"{MODEL_RESULTS}/detection.nc", f"{MODEL_RESULTS}/detection.csv"]


ATTACK_GENERATE_SHELL = (
    "python -m memprune --log {log} attack-generate --model {params.model} {params.pruned} "
    "--prompts-file {params.prompts_file} --start {params.start} --stop {params.stop} --group {wildcards.pset} "
    "--n-samples {params.n} --seed {params.seed} --tile-grid {params.grid} {params.data} {params.sampling} "
    "--out {output} 2>> {log}"
)


def _attack_generate_params():
    return dict(
        model=MODEL_DIR,
        prompts_file=lambda wc: PROMPT_FILES[wc.pset],
        start=lambda wc: int(wc.chunk) * ATK["chunk_size"],
        stop=lambda wc: (int(wc.chunk) + 1) * ATK["chunk_size"],
        digest=lambda wc: prompts_digest(PROMPTS[wc.pset][int(wc.chunk) * ATK["chunk_size"] : (int(wc.chunk) + 1) * ATK["chunk_size"]]),
        n=ATK["n_samples"],
        seed=ATK["seed"],
        grid=ATK["tile_grid"],
        data=f"--data {TESTBED_DATA}" if TESTBED_DATA else "",
        sampling=(f"--steps {ATK['steps']} --guidance {ATK['guidance']} --batch-size {ATK['batch_size']} "
                  f"--device {MODEL['device']} --dtype {MODEL['dtype']}"
                  + (f" --scheduler {MODEL['scheduler']}" if MODEL.get("scheduler") else "")),
    )


rule attack_generate_base:
    conda:
        "../envs/memprune.yaml"
    input:
        model=model_input(),
        data=[TESTBED_DATA] if TESTBED_DATA else [],
    output:
        f"{ATTACK_CACHE}/none/{{pset}}_chunk{{chunk}}.nc",
    params:
        pruned="",
        **_attack_generate_params(),
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/attack/{ATTACK_TAG}/none_{{pset}}_chunk{{chunk}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/attack/{ATTACK_TAG}/none_{{pset}}_chunk{{chunk}}.tsv"
    shell:
        ATTACK_GENERATE_SHELL


rule attack_generate_pruned:
    conda:
        "../envs/memprune.yaml"
    input:
        model=model_input(),
        data=[TESTBED_DATA] if TESTBED_DATA else [],
        checkpoint=lambda wc: pruned_checkpoint(wc.collection, wc.subset),
    output:
        f"{ATTACK_CACHE}/{MASK_TAG}/{{collection}}/{{subset}}/{{pset}}_chunk{{chunk}}.nc",
    params:
        pruned=lambda wc, input: f"--pruned {input.checkpoint}",
        **_attack_generate_params(),
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/attack/{ATTACK_TAG}/{MASK_TAG}_{{collection}}_{{subset}}_{{pset}}_chunk{{chunk}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/attack/{ATTACK_TAG}/{MASK_TAG}_{{collection}}_{{subset}}_{{pset}}_chunk{{chunk}}.tsv"
    shell:
        ATTACK_GENERATE_SHELL


rule attack_analyze:
    conda:
        "../envs/memprune.yaml"
    input:
        lambda wc: attack_chunks(wc.variant),
    output:
        f"{ATTACK_DIR}/{{variant}}.nc",
    wildcard_constraints:
        variant=r"none|pruned_[A-Za-z0-9_-]+_\d+",
    params:
        threshold=ATK["distance_threshold"],
        min_clique=ATK["min_clique"],
        copy_threshold=ATK["copy_threshold"],
        tag=ATTACK_TAG,
        mask_tag=lambda wc: "" if wc.variant == "none" else MASK_TAG,
    log:
        f"logs/{MODEL['name']}/attack/analyze_{{variant}}.log",
    shell:
        "python -m memprune --log {log} attack-analyze --chunks {input} --variant {wildcards.variant} "
        "--threshold {params.threshold} --min-clique {params.min_clique} --copy-threshold {params.copy_threshold} "
        "--out {output} 2>> {log}"


rule attack_table:
    conda:
        "../envs/memprune.yaml"
    input:
        variants=[f"{ATTACK_DIR}/{v}.nc" for v in attack_variants()],
        chunks=[attack_chunks(v)[0] for v in attack_variants()] if ATTACK_SETS else [],
    output:
        table=report(f"{ATTACK_DIR}/table.csv", category="Extraction attack", caption="../report/attack_table.rst"),
        figure=report(f"{MODEL_RESULTS}/figures/attack.png", category="Extraction attack", caption="../report/attack_fig.rst"),
    params:
        chunks=json.dumps({v: attack_chunks(v)[:1] for v in attack_variants()} if ATTACK_SETS else {}),
        data=f"--data {TESTBED_DATA}" if TESTBED_DATA else "",
    log:
        f"logs/{MODEL['name']}/attack/table.log",
    shell:
        "python -m memprune --log {log} attack-table --variants {input.variants} --out {output.table} "
        "--figure {output.figure} --chunks-json {params.chunks:q} {params.data} 2>> {log}"


# ---------------------------------------------------------------------------------------------- detection


rule detection_scores:
    conda:
        "../envs/memprune.yaml"
    input:
        model_input(),
    output:
        f"{DET_DIR}/scores/{{pset}}.nc",
    params:
        model=MODEL_DIR,
        prompts_file=lambda wc: PROMPT_FILES[wc.pset],
        digest=lambda wc: prompts_digest(PROMPTS[wc.pset]),
        args=(f"--n-seeds {DET['n_seeds']} --seed {DET['seed']} --steps {DET['steps']} --score-steps {DET['score_steps']} "
              f"--guidance {DET['guidance']} --batch-size {DET['batch_size']} --device {MODEL['device']} --dtype {MODEL['dtype']}"
              + (f" --scheduler {MODEL['scheduler']}" if MODEL.get("scheduler") else "")),
    threads: 2
    resources:
        gpu=1,
    log:
        f"logs/{MODEL['name']}/detection/{DET_TAG}/{{pset}}.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/detection/{DET_TAG}/{{pset}}.tsv"
    shell:
        "python -m memprune --log {log} detect-scores --model {params.model} --prompts-file {params.prompts_file} "
        "--name {wildcards.pset} {params.args} --out {output} 2>> {log}"


rule detection_report:
    conda:
        "../envs/memprune.yaml"
    input:
        [f"{DET_DIR}/scores/{p}.nc" for p in DET_SETS],
    output:
        nc=report(f"{MODEL_RESULTS}/detection.nc", category="Detection", caption="../report/detection.rst"),
        csv=report(f"{MODEL_RESULTS}/detection.csv", category="Detection", caption="../report/detection.rst"),
    params:
        positive=",".join(DET_POSITIVE),
    log:
        f"logs/{MODEL['name']}/detection/report.log",
    shell:
        "python -m memprune --log {log} detection-report --scores {input} --positive {params.positive} "
        "--out {output.nc} --csv {output.csv} 2>> {log}"


checkpoint detected_prompts:
    conda:
        "../envs/memprune.yaml"
    input:
        lambda wc: [f"{DET_DIR}/scores/{p}.nc" for p in DETECTED_SETS[wc.pset]["detect_from"]],
    output:
        f"{DET_DIR}/detected/{{pset}}.txt",
    params:
        top_k=lambda wc: DETECTED_SETS[wc.pset]["top_k"],
    log:
        f"logs/{MODEL['name']}/detection/{DET_TAG}/detected_{{pset}}.log",
    shell:
        "python -m memprune --log {log} detect-top-k --scores {input} --top-k {params.top_k} --out {output} 2>> {log}"
