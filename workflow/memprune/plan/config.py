"""The config turned into typed prompt sets, collections, methods, model variants, paths and command arguments.

Pure (no Snakemake import) and tested on the shipped configs; `rules/common.smk` only wires it. Every path
template and every benchmark file that a cost is read from is defined here, once. Closed loop: a prompt set
given as {detect_from: [sets], top_k: k} is known by size when the plan is built, by content only after the
checkpoint `detected_prompts` ran: `Plan.prompts(name)` asks the `resolve_detected` callback for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from memprune.plan.types import (  # noqa: F401 (re-exported: rules and modules import them from here)
    Collection, EvalModel, Method, PromptSet, key_error, options, prompts_digest,
)
from memprune.plan.inputs import read_prompt_file
from memprune.plan.schema import resolve_shared
from memprune.plan.subsets import chunks_of, draw_subsets, subsets_from_files


TAG_NAMES = {"sparsity": "sp", "theta_step": "dth", "theta_min": "thmin", "step_index": "at", "max_refine": "ref",
             "max_calibration": "ncal", "calibration": "on"}  # parameter names shortened in path tags
# The headline targets (`snakemake results/iou.nc`): copies of the loaded config's model's own (Plan.analysis_outputs)
LATEST = {"results/iou.nc": "iou", "results/density.nc": "density"}


@dataclass
class Plan:
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
        self.methods = self._methods()

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

    def _methods(self) -> dict[str, Method]:
        from memprune import localize

        shared = self.config["masks"]
        methods, per_step = {}, {}
        for name, given in self.config["localizers"].items():
            given = dict(given or {})
            impl = given.pop("localizer", name)  # e.g. random_nemo: {localizer: random, like: nemo}
            loc = localize.get(impl)
            params = loc.params({k: v for k, v in {**shared, **given}.items() if k in loc.defaults})
            ref = params.get("like") if loc.reference else None
            if loc.reference and ref not in methods:
                raise key_error(f"localizers.{name}.like",
                                f"{ref!r} is not a localizer listed before it; known: {sorted(methods)}")
            if loc.per_prompt and not params.get("calibration"):
                raise key_error(f"localizers.{name}.calibration", "name the non-memorized prompt sets it calibrates on")
            for set_name in params.get("calibration") or ():
                if set_name not in self.sets or self.sets[set_name].detected:
                    raise key_error(f"localizers.{name}.calibration",
                                    f"{set_name!r} is not a prompt set read from a file")

            def value(v):
                return "+".join(map(str, v)) if isinstance(v, (list, tuple)) else v

            own = "_".join(f"{TAG_NAMES.get(k, k)}{value(v)}" for k, v in params.items() if k != "like")
            if loc.statistics:
                tag = f"{self.act_tag}_{own}"
            elif ref:
                tag = f"{ref}-{methods[ref].tag}_{own}"
            else:
                tag = own or "default"  # a method without parameters (oracle)
            methods[name] = Method(name, params, tag, tuple(loc.statistics), ref, impl, loc.per_prompt)
            per_step[name] = loc.uses_timesteps and (per_step[ref] if ref else True)  # random: as the one it imitates
        if not methods:
            raise key_error("localizers", "no localizer listed")
        if not any(per_step.values()):  # the analysis's IOU over time (rules/analysis.smk) needs one
            raise key_error("localizers", f"none of {sorted(methods)} gives per-timestep masks, which the analysis "
                                          "(iou.nc over time) needs: list one that does, e.g. wanda: {}")
        return methods

    # ------------------------------------------------------------------------------------------ paths

    @property
    def results(self) -> str:
        return f"results/{self.name}"

    @property
    def act_dir(self) -> str:
        return f"{self.results}/activations/{self.act_tag}"

    @property
    def det_dir(self) -> str:
        return f"{self.results}/detection/{self.det_tag}"

    def chunk_size(self) -> int:
        return self.config["activations"]["chunk_size"]

    def chunk_store(self, pset: str, chunk: int) -> str:
        return f"{self.act_dir}/{pset}/chunk{chunk}.zarr"

    def gathered(self, collection: str) -> str:
        return f"{self.act_dir}/subsets/{collection}"

    def masks_dir(self, method: str, collection: str) -> str:
        return f"{self.results}/masks/{method}/{self.methods[method].tag}/{collection}"

    def mask_store(self, method: str, collection: str, subset: int) -> str:
        return f"{self.masks_dir(method, collection)}/{subset}.zarr"

    def neurons(self, method: str, pset: str) -> str:
        """A per-prompt localizer's search over the prompts of a set that its collections use
        (memprune.localize.nemo_search)."""
        return f"{self.results}/{method}/{self.methods[method].tag}/neurons/{pset}.nc"

    def neuron_prompts(self, pset: str) -> list[int]:
        """The indices of a prompt set's prompts in any subset of its collections (each searched once)."""
        return sorted({i for c in self.collections.values() if c.set == pset for s in c.subsets for i in s})

    def calibration(self, method: str) -> str:
        return f"{self.results}/{method}/{self.methods[method].tag}/calibration.nc"

    def calibration_files(self, method: str) -> list[str]:
        return [self.sets[s].file for s in self.methods[method].params["calibration"]]

    @property
    def analysis_outputs(self) -> dict[str, str]:
        """This model's density and IOU of the masks (rules/analysis.smk) and their figures, by output name."""
        files = {"density": "density.nc", "iou": "iou.nc", "fig_density": "figures/density.png",
                 "fig_iou": "figures/iou.png"}
        return {name: f"{self.results}/{file}" for name, file in files.items()}

    def pruned(self, method: str, collection: str, subset: int) -> str:
        return f"{self.results}/pruned/{method}/{self.methods[method].tag}/{collection}/{subset}"

    def bench(self, stage: str, name: str) -> str:
        """The Snakemake benchmark file of a job (costs are read from these)."""
        return f"benchmarks/{self.name}/{stage}/{name}.tsv"

    def log(self, stage: str, name: str) -> str:
        return f"logs/{self.name}/{stage}/{name}.log"

    def capture_bench(self, pset: str | None, chunk: int | None = None) -> str:
        return self.bench(f"capture/{self.act_tag}", "null" if pset is None else f"{pset}_chunk{chunk}")

    def masks_bench(self, method: str, collection: str) -> str:
        return self.bench(f"masks/{method}/{self.methods[method].tag}", collection)

    def prune_bench(self, method: str, collection: str, subset: int) -> str:
        return self.bench(f"prune/{method}/{self.methods[method].tag}", f"{collection}_{subset}")

    # ------------------------------------------------------------------------------------------ localization

    def chunk_prompts(self, pset: str, chunk: int) -> list[str]:
        n = self.chunk_size()
        return self.prompts(pset)[chunk * n : (chunk + 1) * n]

    def collection_chunks(self, collection: str) -> list[str]:
        c = self.collections[collection]
        indices = sorted({i for s in c.subsets for i in s})
        return [self.chunk_store(c.set, k) for k in chunks_of(indices, self.chunk_size())]

    def subsets_json(self, collection: str) -> str:
        return json.dumps({str(i): list(s) for i, s in enumerate(self.collections[collection].subsets)})

    def mask_inputs(self, method: str, collection: str) -> dict:
        m = self.methods[method]
        inputs = {"layers": self.layers_file}
        if m.statistics:
            inputs["subsets"] = self.gathered(collection)
            inputs["null"] = f"{self.act_dir}/null.zarr"
        if m.reference:
            inputs["reference"] = self.masks_dir(m.reference, collection)
        if m.per_prompt:
            inputs["neurons"] = self.neurons(method, self.collections[collection].set)
        return inputs

    def all_mask_dirs(self) -> list[str]:
        return [self.masks_dir(m, c) for m in self.methods for c in self.collections]

    def analysis_json(self) -> str:
        return json.dumps({m: {c: {"control": col.control,
                                   "masks": [self.mask_store(m, c, i) for i in range(len(col.subsets))]}
                               for c, col in self.collections.items()} for m in self.methods})

    def targets(self) -> list[str]:
        targets = list(self.analysis_outputs.values()) + list(LATEST)
        if self.derived and self.derived["kind"] == "planted":
            targets.append(f"{self.results}/localization.nc")
        return targets + ([self.report] if self.is_testbed else [])

    @property
    def report(self) -> str:
        """The testbed report of the model (rules/testbed.smk)."""
        return f"{self.results}/report.nc"

    # ------------------------------------------------------------------------------------------ commands

    def image_size(self, section: dict | None = None) -> dict:
        """{height, width} in pixels of every stage that generates or probes: its `section`'s own, else config
        `sampling`'s; None: the model's default resolution, given as no option (a run at it plans the commands it
        always did)."""
        return {k: (section or {}).get(k) or self.config["sampling"].get(k) for k in ("height", "width")}

    def sampling_args(self, section: dict | None = None) -> str:
        s, m = section or self.config["sampling"], self.model
        args = [f"--steps {s['steps']}", f"--guidance {s['guidance']}", f"--batch-size {s['batch_size']}",
                f"--device {m['device']}", f"--dtype {m['dtype']}",
                f"--compile {str(m.get('compile', 'auto')).lower()}"]
        return " ".join(args + [options(scheduler=m.get("scheduler") or None, **self.image_size(section))]).rstrip()

    def variant_params(self, variant: str) -> dict:
        return dict(self.config.get("mitigation", {}).get(variant, {}))

    def variant_args(self, model: EvalModel, checkpoint: str | None = None) -> str:
        args = f"--variant {model.variant}"
        if checkpoint:
            args += f" --checkpoint {checkpoint}"
        params = self.variant_params(model.variant)
        return args + (f" --variant-params '{json.dumps(params)}'" if params else "")

    def models(self, variants: list[str], pruned: dict[str, list[int]], methods: list[str]) -> list[EvalModel]:
        from memprune import variants as registry

        out = []
        for v in variants:
            entry = registry.get(v)
            if entry.trained:
                out.append(EvalModel(v, v, f"{v}/{self.trained_tag()}", checkpoint=self.trained_checkpoint()))
                continue
            if not entry.needs_checkpoint:
                out.append(EvalModel(v, v, v))
                continue
            for method in methods:
                for c, subsets in pruned.items():
                    for i in subsets:
                        out.append(EvalModel(f"{v}:{method}|{c}/{i}", v,
                                             f"{v}/{method}/{self.methods[method].tag}/{c}/{i}", method, c, int(i)))
        if not out or out[0].id != "none":
            out = [EvalModel("none", "none", "none")] + [m for m in out if m.id != "none"]
        return out

    def checkpoint_of(self, model: EvalModel) -> str | None:
        if model.checkpoint:
            return model.checkpoint
        return None if model.method is None else self.pruned(model.method, model.collection, model.subset)

    def trained_tag(self) -> str:
        """The adversarial fine-tune's folder name: its rounds and search budget, and a digest of its whole block."""
        a = self.config.get("adversarial") or {}
        digest = hashlib.sha256(json.dumps(a, sort_keys=True).encode()).hexdigest()[:8]
        return f"r{a.get('rounds', 3)}_s{a.get('search_steps', 50)}_{digest}"

    def trained_checkpoint(self) -> str:
        if not self.is_testbed and not (self.config.get("recovery") or {}).get("images"):
            raise key_error("variants", "the adversarial variant fine-tunes on a testbed's dataset or recovery.images: "
                            "this model has neither")
        return f"{self.results}/adversarial/{self.trained_tag()}/checkpoint"

    def _check_methods(self, key: str, methods: list[str]) -> list[str]:
        bad = [m for m in methods if m not in self.methods]
        if bad:
            raise key_error(key, f"{bad} are not listed under localizers; known: {sorted(self.methods)}")
        return methods

    def _check_pruned(self, key: str, pruned: dict[str, list[int]]) -> dict[str, list[int]]:
        for c, subsets in pruned.items():
            if c not in self.collections:
                raise key_error(key, f"unknown collection {c!r}; known: {sorted(self.collections)}")
            bad = [i for i in subsets if i >= len(self.collections[c].subsets)]
            if bad:
                raise key_error(f"{key}.{c}", f"subset {bad[0]} out of range "
                                f"(the collection has {len(self.collections[c].subsets)})")
        return pruned

    def first_memorized(self) -> str | None:
        return next((c for c, col in self.collections.items() if not col.control), None)

    def file_sets(self, key: str, names: list[str]) -> list[str]:
        bad = [n for n in names if n not in self.sets or self.sets[n].detected]
        if bad:
            raise key_error(key, f"{bad} are not prompt sets read from files; known: "
                            f"{sorted(n for n, s in self.sets.items() if not s.detected)}")
        return list(names)
