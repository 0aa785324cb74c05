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
