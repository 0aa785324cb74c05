# Config-derived paths, prompt sets, subsets and input functions. Prompt files are read here, when the DAG
# is built, so a bad prompt file stops the run before any job starts, with the file and line named.
import hashlib
import json
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

PROMPT_FILES = {name: repo_path(path) for name, path in config["prompt_sets"].items()}
PROMPTS = {name: read_prompts(Path(path)) for name, path in PROMPT_FILES.items()}


def _collection_subsets(name, spec):
    where = f"config key collections.{name}"
    if spec["set"] not in PROMPTS:
        raise ValueError(f"{where}.set: unknown prompt set {spec['set']!r}; known: {sorted(PROMPTS)}")
    prompts = PROMPTS[spec["set"]]
    if "files" in spec:
        return subsets_from_files(prompts, [repo_path(f) for f in spec["files"]], where)
    return draw_subsets(len(prompts), spec["n_subsets"], spec["size"], spec.get("seed", 0), where)


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
            + (f" --scheduler {MODEL['scheduler']}" if MODEL.get("scheduler") else ""))


def prompts_digest(prompts):
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
