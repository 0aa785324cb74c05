"""The config turned into typed prompt sets, collections, methods, model variants, paths and command arguments.

Pure (no Snakemake import) and tested on the shipped configs; `rules/common.smk` only wires it. `Plan` reads the
config's inputs (prompt sets, collections, localizers: `memprune.plan.methods`) and takes its other concerns from
its parts: `PlanPaths` (every path template and benchmark record, defined once), `PlanJobs` (what the
localization jobs read) and `PlanCommands` (command arguments and compared models). Closed loop: a prompt set
given as {detect_from: [sets], top_k: k} is known by size when the plan is built, by content only after the
checkpoint `detected_prompts` ran: `Plan.prompts(name)` asks the `resolve_detected` callback for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from memprune.plan.types import (  # noqa: F401 (re-exported: rules and modules import them from here)
    Collection, EvalModel, Method, PromptSet, key_error, options, prompts_digest,
)
from memprune.plan.commands import PlanCommands
from memprune.plan.inputs import read_prompt_file
from memprune.plan.jobs import PlanJobs
from memprune.plan.methods import TAG_NAMES, build_methods  # noqa: F401 (TAG_NAMES re-exported)
from memprune.plan.paths import LATEST, PlanPaths  # noqa: F401 (LATEST re-exported)
from memprune.plan.schema import resolve_shared
from memprune.plan.subsets import draw_subsets, subsets_from_files


@dataclass
class Plan(PlanPaths, PlanJobs, PlanCommands):
    config: dict
    repo: Path
    resolve_detected: Callable[[str], list[str]] | None = None
    sets: dict[str, PromptSet] = field(init=False)
    collections: dict[str, Collection] = field(init=False)
    methods: dict[str, Method] = field(init=False)

    def __post_init__(self):
        cfg = resolve_shared(self.config)  # a stage's unset copy_threshold: the top-level one
        self.model = cfg["model"]
        self.name = self.model["name"]
        tb = cfg["testbed"]
        self.derived = tb.get("derived")  # a testbed derived from the shipped one (testbed/derived.py)
        if self.derived and self.name == "testbed":
            raise key_error("model.name",
                            "a derived testbed needs its own name (results/testbed holds its base's data)")
        self.is_testbed = Path(self.model["path"]).name == "testbed" or tb["use_retrained"] or bool(self.derived)
        retrained = f"results/{self.name}/model" if self.derived else "results/testbed/model"
        self.model_dir = retrained if tb["use_retrained"] else self.repo_path(self.model["path"])
        self.model_is_local = (tb["use_retrained"] or Path(self.model_dir).exists()
                               or self.model_dir.startswith("results/"))
        # the dataset the model is measured against: the testbed's, or the derived testbed's extended one
        self.data_dir = f"results/{self.name}/data" if self.derived else "results/testbed/data"
        self.layers_file = f"results/{self.name}/layers.safetensors"  # observed weights + UNet hash (formats/layers.py)
        s, a, d = cfg["sampling"], cfg["activations"], cfg["detection"]
        self.act_tag = f"seed{s['seed']}_steps{s['steps']}_g{s['guidance']}_{a['variant']}"
        self.det_tag = f"seed{d['seed']}x{d['n_seeds']}_steps{d['steps']}_first{d['score_steps']}_g{d['guidance']}"
        self._read: dict[str, list[str]] = {}
        self.sets = self._prompt_sets()
        self.collections = {n: self._collection(n, spec) for n, spec in cfg["collections"].items()}
        self.methods = build_methods(self.config, self.sets, self.act_tag)

    # ------------------------------------------------------------------------------------------ inputs

    def repo_path(self, path: str) -> str:
        """A path as given if it exists from the working directory, else relative to the repository (so the
        shipped resources are found when Snakemake runs with --directory elsewhere)."""
        p = Path(path)
        if p.is_absolute() or p.exists() or not (self.repo / p).exists():
            return str(path)
        return str(self.repo / p)

    def _prompt_sets(self) -> dict[str, PromptSet]:
        sets, detected = {}, {}
        for name, spec in self.config["prompt_sets"].items():
            if isinstance(spec, dict):
                detected[name] = spec
                continue
            path = self.repo_path(spec)
            self._read[name] = read_prompt_file(path)  # a bad file stops the plan, naming file and line (plan.inputs)
            sets[name] = PromptSet(name, path, len(self._read[name]))
        for name, spec in detected.items():
            bad = [p for p in spec["detect_from"] if p not in sets]
            if bad:
                raise key_error(f"prompt_sets.{name}.detect_from",
                                f"{bad} are not prompt sets read from files; known: {sorted(sets)}")
            sets[name] = PromptSet(name, f"{self.det_dir}/detected/{name}.txt", spec["top_k"],
                                   tuple(spec["detect_from"]))
        return sets

    def prompts(self, name: str) -> list[str]:
        if name in self._read:
            return self._read[name]
        if self.resolve_detected is None:
            raise RuntimeError(f"prompt set {name} is detected: its prompts exist once the checkpoint ran")
        return self.resolve_detected(name)

    def _collection(self, name: str, spec: dict) -> Collection:
        where = f"collections.{name}"
        if spec["set"] not in self.sets:
            raise key_error(f"{where}.set", f"unknown prompt set {spec['set']!r}; known: {sorted(self.sets)}")
        pset = self.sets[spec["set"]]
        if "files" in spec:
            if pset.detected:
                raise key_error(f"{where}.files",
                                "subsets of a detected prompt set are drawn (n_subsets, size), not listed")
            subsets = subsets_from_files(self._read[pset.name], [self.repo_path(f) for f in spec["files"]],
                                         f"config key {where}")
        else:
            subsets = draw_subsets(pset.size, spec["n_subsets"], spec["size"], spec.get("seed", 0),
                                   f"config key {where}")
        return Collection(name, pset.name, tuple(tuple(int(i) for i in s) for s in subsets), bool(spec.get("control")))
