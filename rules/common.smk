# Config-derived paths, prompt sets, subsets and input functions. Prompt files are read here, when the DAG
# is built, so a bad prompt file stops the run before any job starts, with the file and line named.
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from memprune.prompts import read_prompts
from memprune.subsets import chunks_of, draw_subsets, subsets_from_files

REPO = Path(workflow.basedir)


def repo_path(path):
    """A path as given if it exists from the working directory, else relative to the repository (so the
    shipped resources are found when Snakemake runs with --directory elsewhere)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not (REPO / p).exists():
        return str(path)
    return str(REPO / p)


MODEL = config["model"]
RESULTS = "results"
MODEL_RESULTS = f"{RESULTS}/{MODEL['name']}"
IS_TESTBED = Path(MODEL["path"]).name == "testbed" or config["testbed"]["use_retrained"]
MODEL_DIR = "results/testbed/model" if config["testbed"]["use_retrained"] else repo_path(MODEL["path"])
MODEL_IS_LOCAL = config["testbed"]["use_retrained"] or Path(MODEL_DIR).exists()

S = config["sampling"]
A_CFG = config["activations"]
ACT_TAG = f"seed{S['seed']}_steps{S['steps']}_g{S['guidance']}_{A_CFG['variant']}"
ACT_DIR = f"{MODEL_RESULTS}/activations/{ACT_TAG}"
MASK_TAG = f"{ACT_TAG}_sp{config['masks']['sparsity']}_tau{config['masks']['tau']}"
MASK_DIR = f"{MODEL_RESULTS}/masks/{MASK_TAG}"
CHUNK = A_CFG["chunk_size"]

wildcard_constraints:
    collection=r"[A-Za-z0-9_-]+",
    pset=r"[A-Za-z0-9_-]+",
    subset=r"\d+",
    chunk=r"\d+",

# Closed loop: a prompt set given as {detect_from: [sets], top_k: k} is the k prompts of that pool which
# detection (rules/attack.smk) scores highest. The checkpoint `detected_prompts` writes its file; its size (k)
# is known now, its prompts only after the checkpoint ran: input functions that need them call
# `checkpoints.detected_prompts.get()` first (subset_chunks), so Snakemake builds those jobs afterwards.
DETECTED_SETS = {name: spec for name, spec in config["prompt_sets"].items() if isinstance(spec, dict)}
DET = config["detection"]
DET_TAG = f"seed{DET['seed']}x{DET['n_seeds']}_steps{DET['steps']}_first{DET['score_steps']}_g{DET['guidance']}"
DET_DIR = f"{MODEL_RESULTS}/detection/{DET_TAG}"
PROMPT_FILES = {name: f"{DET_DIR}/detected/{name}.txt" if name in DETECTED_SETS else repo_path(path)
                for name, path in config["prompt_sets"].items()}
for _name, _spec in DETECTED_SETS.items():
    _bad = [p for p in _spec["detect_from"] if p not in PROMPT_FILES or p in DETECTED_SETS]
    if _bad:
        raise ValueError(f"config key prompt_sets.{_name}.detect_from: {_bad} are not prompt sets read from files; "
                         f"known: {sorted(set(PROMPT_FILES) - set(DETECTED_SETS))}")


class DetectedPrompts(Sequence):
    """A detected prompt set (or a slice of it): its length is known when the DAG is built, its prompts once the
    checkpoint `detected_prompts` wrote them; reading one earlier raises Snakemake's
    IncompleteCheckpointException, which input functions turn into "wait for the checkpoint"."""

    def __init__(self, name, indices=None):
        self.name = name
        self.indices = range(DETECTED_SETS[name]["top_k"]) if indices is None else indices

    def _prompts(self):
        checkpoints.detected_prompts.get(pset=self.name)
        prompts = read_prompts(Path(PROMPT_FILES[self.name]))
        return [prompts[i] for i in self.indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return DetectedPrompts(self.name, self.indices[i])
        return self._prompts()[i]

    def __iter__(self):
        return iter(self._prompts())


class PromptSets(Mapping):
    """Prompt set name -> prompts: files are read now (a bad file stops the run before any job), detected sets
    are `DetectedPrompts`."""

    def __init__(self):
        self._read = {n: read_prompts(Path(p)) for n, p in PROMPT_FILES.items() if n not in DETECTED_SETS}

    def __getitem__(self, name):
        return DetectedPrompts(name) if name in DETECTED_SETS else self._read[name]

    def __contains__(self, name):
        return name in PROMPT_FILES

    def __iter__(self):
        return iter(PROMPT_FILES)

    def __len__(self):
        return len(PROMPT_FILES)


PROMPTS = PromptSets()


def _collection_subsets(name, spec):
    where = f"config key collections.{name}"
    if spec["set"] not in PROMPTS:
        raise ValueError(f"{where}.set: unknown prompt set {spec['set']!r}; known: {sorted(PROMPTS)}")
    if "files" in spec:
        if spec["set"] in DETECTED_SETS:
            raise ValueError(f"{where}.files: subsets of a detected prompt set are drawn (n_subsets, size), not listed")
        return subsets_from_files(PROMPTS[spec["set"]], [repo_path(f) for f in spec["files"]], where)
    return draw_subsets(len(PROMPTS[spec["set"]]), spec["n_subsets"], spec["size"], spec.get("seed", 0), where)


SUBSETS = {name: _collection_subsets(name, spec) for name, spec in config["collections"].items()}


def model_input():
    """The model directory as a Snakemake input (so a retrained testbed reruns what depends on it)."""
    return [MODEL_DIR] if MODEL_IS_LOCAL else []


def chunk_prompts(pset, chunk):
    chunk = int(chunk)
    return PROMPTS[pset][chunk * CHUNK : (chunk + 1) * CHUNK]


def subset_prompts(collection, subset):
    spec = config["collections"][collection]
    return [PROMPTS[spec["set"]][i] for i in SUBSETS[collection][int(subset)]]


def subset_chunks(wildcards):
    spec = config["collections"][wildcards.collection]
    if spec["set"] in DETECTED_SETS:  # closed loop: its chunks (and their params) exist once detection ran
        checkpoints.detected_prompts.get(pset=spec["set"])
    indices = SUBSETS[wildcards.collection][int(wildcards.subset)]
    return [f"{ACT_DIR}/{spec['set']}/chunk{c}.zarr" for c in chunks_of(indices, CHUNK)]


def collection_masks(collection):
    return [f"{MASK_DIR}/{collection}/{i}.zarr" for i in range(len(SUBSETS[collection]))]


def all_masks():
    return [m for c in config["collections"] for m in collection_masks(c)]


def all_targets():
    targets = [f"{RESULTS}/iou.nc", f"{RESULTS}/density.nc", f"{RESULTS}/figures/iou.png"]
    if IS_TESTBED:
        targets.append("results/testbed/report.nc")
    return targets


def sampling_args():
    return (f"--steps {S['steps']} --guidance {S['guidance']} --batch-size {S['batch_size']} "
            f"--device {MODEL['device']} --dtype {MODEL['dtype']}"
            + (f" --scheduler {MODEL['scheduler']}" if MODEL.get("scheduler") else "")
            + (f" --height {S['height']}" if S.get("height") else "")
            + (f" --width {S['width']}" if S.get("width") else ""))


def prompts_digest(prompts):
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- helpers of the pruned checkpoints (rules/prune.smk)

def pruned_checkpoint(collection, subset):
    return f"{MODEL_RESULTS}/pruned/{MASK_TAG}/{collection}/{subset}"


def pruned_checkpoints(collection):
    return [pruned_checkpoint(collection, i) for i in range(len(SUBSETS[collection]))]


# ---------------------------------------------------------------- helpers of the evaluation (rules/evaluate.smk)

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


# ---------------------------------------------------------------- helpers of the extraction attack and detection (rules/attack.smk)

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
