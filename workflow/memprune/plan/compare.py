"""The comparison half of the plan: which models evaluation, the extraction attack and detection compare, their
paths, inputs and command arguments (`memprune.plan.config` holds prompt sets, collections and localizers)."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from memprune.plan.config import EvalModel, Plan, key_error, options
from memprune.plan.chunks import nemo_search_parts
from memprune.plan.inputs import evaluation_prompts


def _benchmark_parts(plan: Plan, method: str, collection: str, subset: int) -> list[list]:
    """The Snakemake benchmark files of what a pruned model's masks cost, with the share that is its own: the
    capture chunks holding its prompts (in proportion of its prompts in each), the null-prompt capture, the model's
    layers file, its collection's mask job (one n-th), the imitated method's share (random), and its prune job."""
    m, col = plan.methods[method], plan.collections[collection]
    parts = []
    if m.statistics:
        indices, n = col.subsets[subset], plan.chunk_size()
        size = plan.sets[col.set].size
        for chunk in sorted({k // n for k in indices}):
            in_chunk = sum(1 for k in indices if k // n == chunk)
            parts.append([plan.capture_bench(col.set, chunk), in_chunk / (min((chunk + 1) * n, size) - chunk * n)])
        parts.append([plan.capture_bench(None), 1.0])
    if m.per_prompt:  # its search chunks, each in proportion of its prompts that are the subset's; calibration whole
        parts += nemo_search_parts(plan, method, col.set, col.subsets[subset])
        parts.append([plan.bench(f"nemo/{method}/{m.tag}", "calibration"), 1.0])
    layers = plan.bench("model", "layers")  # the observed weights every mask job reads: whole, as the null capture
    if m.reference:
        parts += [p for p in _benchmark_parts(plan, m.reference, collection, subset)
                  if "/prune/" not in p[0] and p[0] != layers]
    parts += [[layers, 1.0], [plan.masks_bench(method, collection), 1.0 / len(col.subsets)]]
    parts.append([plan.prune_bench(method, collection, subset), 1.0])
    return parts


def image_roots(plan: Plan, key: str, sets: list[str]) -> dict[str, str]:
    """{set: root} of the fetched training images of `sets` (config recovery.images: <root>/<index>/*.png), for a
    model without a testbed dataset; a set without a directory is refused, naming `key`."""
    images = (plan.config.get("recovery") or {}).get("images") or {}
    missing = [s for s in sets if s not in images]
    if missing:
        raise key_error("recovery.images", f"{missing} ({key}) have no training-image directory: give <set>: <root> "
                        "(`memprune fetch-training-images` writes <root>/<index>/0.png)")
    return {s: plan.repo_path(images[s]) for s in sets}


def truth_args(plan: Plan, roots: dict[str, str]) -> str:
    """The training photos' arguments of `recover` / `adversarial-finetune`: the testbed dataset, or the roots."""
    images = {s: [root, plan.sets[s].file] for s, root in roots.items()}
    return f"--data {plan.data_dir}" if plan.is_testbed else f"--images-json {shlex.quote(json.dumps(images))}"


def built_or_present(path: str) -> bool:
    """Whether a path is an input of the jobs reading it: it exists here, or it lies under results/ (a workflow
    output, e.g. a random model's stand-in images); elsewhere a missing file is named by the job, not the plan."""
    return Path(path).exists() or path.startswith("results/")


def truth_inputs(plan: Plan, roots: dict[str, str]) -> list[str]:
    """The testbed dataset, or the image roots (`built_or_present`)."""
    return [plan.data_dir] if plan.is_testbed else [r for r in roots.values() if built_or_present(r)]


@dataclass
class Evaluation:
    plan: Plan

    def __post_init__(self):
        plan, ev = self.plan, self.plan.config["evaluate"]
        self.cfg = ev
        first = plan.first_memorized()
        self.collections = ev["collections"] or ([first] if first else [])
        for c in self.collections:
            if c not in plan.collections:
                raise key_error("evaluate.collections", f"unknown collection {c!r}; known: {sorted(plan.collections)}")
        methods = plan._check_methods("evaluate.methods", ev["methods"] or list(plan.methods)[:1])
        caps = ev.get("max_subsets")
        if isinstance(caps, dict):
            plan._check_methods("evaluate.max_subsets", list(caps))

        def pruned(method):  # the first max_subsets subsets of each collection (per method when a mapping)
            cap = caps.get(method) if isinstance(caps, dict) else caps
            return {c: list(range(len(plan.collections[c].subsets) if cap is None
                                  else min(cap, len(plan.collections[c].subsets))))
                    for c in self.collections}

        self.models = plan.models(["none"], {}, methods)  # the unedited model first
        for v in ev["variants"]:
            for method in methods:
                self.models += [m for m in plan.models([v], pruned(method), [method])
                                if m.id not in {x.id for x in self.models}]
        s = plan.config["sampling"]
        self.dir = f"{plan.results}/eval/steps{s['steps']}_g{s['guidance']}"
        mem_set = ev["memorized"] or (plan.collections[self.collections[0]].set if self.collections else None)
        self.memorized = (plan.sets[mem_set].file if mem_set in plan.sets
                          else (plan.repo_path(mem_set) if mem_set else None))
        self.nonmemorized = plan.repo_path(ev["nonmemorized"]) if ev.get("nonmemorized") else None
        detected = mem_set in plan.sets and plan.sets[mem_set].detected  # its file is written by detection
        # read now as eval-sample will, so a bad file stops the plan (naming file and line), not the job
        evaluation_prompts(None if detected else self.memorized, ev["max_memorized"], self.nonmemorized,
                           ev["max_nonmemorized"])
        self.data = plan.data_dir if plan.is_testbed and not ev.get("ground_truth") else None
        clip = ev["clip"]
        self.clip_dir = ("results/testbed/clip" if clip.get("use_retrained")
                         else (plan.repo_path(clip["weights"]) if clip["weights"] else None))

    def by_path(self) -> dict[str, EvalModel]:
        return {m.path: m for m in self.models}

    def samples(self, model: EvalModel) -> str:
        return f"{self.dir}/samples/{model.path}"

    def scores(self, model: EvalModel) -> str:
        return f"{self.dir}/scores/{model.path}.nc"

    def prompt_args(self) -> str:
        ev = self.cfg
        return options(memorized=self.memorized, max_memorized=ev["max_memorized"], nonmemorized=self.nonmemorized,
                       max_nonmemorized=ev["max_nonmemorized"])

    def metric_args(self) -> str:
        ev, plan = self.cfg, self.plan
        return options(data=self.data,
                       ground_truth=plan.repo_path(ev["ground_truth"]) if ev.get("ground_truth") else None,
                       sscd=plan.repo_path(ev["sscd"]) if ev.get("sscd") else None, clip_name=ev["clip"].get("name"),
                       clip_weights=self.clip_dir,
                       inception=plan.repo_path(ev["inception"]) if ev.get("inception") else None,
                       device=plan.model["device"])

    def metric_inputs(self) -> dict:
        """Local files the scores depend on (the dataset, the CLIP folder or file when it exists here)."""
        from pathlib import Path

        inputs = {"data": self.data} if self.data else {}
        if self.cfg.get("ground_truth") and built_or_present(self.plan.repo_path(self.cfg["ground_truth"])):
            inputs["ground_truth"] = self.plan.repo_path(self.cfg["ground_truth"])
        if self.cfg["clip"].get("use_retrained") or (self.clip_dir and Path(self.clip_dir).exists()):
            inputs["clip"] = self.clip_dir
        return inputs

    def models_json(self) -> str:
        plan, out = self.plan, {}
        for m in self.models:
            entry = {"variant": m.variant, "scores": self.scores(m)}
            if m.method is not None:
                col = plan.collections[m.collection]
                entry.update(method=m.method, subset=m.subset_label, prompts_file=plan.sets[col.set].file,
                             indices=list(col.subsets[m.subset]),
                             mask_costs=_benchmark_parts(plan, m.method, m.collection, m.subset))
            out[m.id] = entry
        return json.dumps(out)

    def targets(self) -> list[str]:
        r = self.plan.results
        return [f"{r}/eval.nc", f"{r}/eval_summary.csv", f"{r}/figures/eval_copy_vs_clip.png",
                f"{r}/figures/eval_fid_time.png", f"{r}/figures/eval_grid.png"]


@dataclass
class Attack:
    plan: Plan

    def __post_init__(self):
        plan, atk = self.plan, self.plan.config["attack"]
        self.cfg = atk
        first = plan.first_memorized()
        default_sets = ([plan.collections[first].set]
                        if first and not plan.sets[plan.collections[first].set].detected else [])
        self.sets = plan.file_sets("attack.candidates", atk["candidates"] or default_sets)
        pruned = plan._check_pruned("attack.pruned",
                                    atk["pruned"] if atk["pruned"] is not None else ({first: [0]} if first else {}))
        methods = plan._check_methods("attack.methods", atk["methods"] or list(plan.methods)[:1])
        self.models = plan.models(atk["variants"], pruned, methods)
        self.tag = (f"n{atk['n_samples']}_seed{atk['seed']}_steps{atk['steps']}"
                    f"_g{atk['guidance']}_grid{atk['tile_grid']}")
        self.dir = f"{plan.results}/attack"
        self.data = plan.data_dir if plan.is_testbed else None

    def by_path(self) -> dict[str, EvalModel]:
        return {m.path: m for m in self.models}

    def chunk(self, model: EvalModel, pset: str, k: int) -> str:
        return f"{self.dir}/cache/{self.tag}/{model.path}/{pset}_chunk{k}.nc"

    def chunks(self, model: EvalModel) -> list[str]:
        n = self.cfg["chunk_size"]
        return [self.chunk(model, p, k) for p in self.sets for k in range((self.plan.sets[p].size + n - 1) // n)]

    def result(self, model: EvalModel) -> str:
        return f"{self.dir}/{model.path}.nc"

    def chunk_range(self, k: int) -> tuple[int, int]:
        n = self.cfg["chunk_size"]
        return k * n, (k + 1) * n

    def targets(self) -> list[str]:
        return [f"{self.dir}/table.csv", f"{self.plan.results}/figures/attack.png"]


@dataclass
class Detection:
    plan: Plan

    def __post_init__(self):
        plan, det = self.plan, self.plan.config["detection"]
        self.cfg = det
        self.sets = plan.file_sets("detection.candidates",
                                   det["candidates"] or [n for n, s in plan.sets.items() if not s.detected])
        self.positive = det["positive"] or list(dict.fromkeys(
            c.set for c in plan.collections.values() if not c.control and c.set in self.sets))
        if not set(self.positive) <= set(self.sets):
            raise key_error("detection.positive", f"{sorted(set(self.positive) - set(self.sets))} are not in "
                            f"detection.candidates {self.sets}")
        self.dir = plan.det_dir
        self.detected = {n: s for n, s in plan.sets.items() if s.detected}

    def scores(self, pset: str) -> str:
        return f"{self.dir}/scores/{pset}.nc"

    def args(self) -> str:
        d = self.cfg
        return (f"--n-seeds {d['n_seeds']} --seed {d['seed']} --score-steps {d['score_steps']} "
                + self.plan.sampling_args(d))  # its steps, guidance, batch size; its own size, else sampling's

    def targets(self) -> list[str]:
        r = self.plan.results
        return [f"{r}/detection.nc", f"{r}/detection.csv"]


@dataclass
class Recovery:
    """The recovery attack ("Finding Dori", attacks/recovery.py) on every compared model: one job per model
    (results/<model>/recovery/<model path>.nc), merged into results/<model>/recovery.nc with a table and figure."""

    plan: Plan

    def __post_init__(self):
        plan, rec = self.plan, self.plan.config.get("recovery") or {}
        self.cfg = rec
        # the targets are a testbed's photos, or (Stable Diffusion) the fetched images of recovery.images
        self.enabled = bool(rec.get("targets")) and (plan.is_testbed or bool(rec.get("images")))
        if not self.enabled:
            self.models, self.sets, self.controls, self.roots = [], [], [], {}
            return
        first = plan.first_memorized()
        self.sets = plan.file_sets("recovery.targets", rec["targets"])
        self.controls = plan.file_sets("recovery.controls", rec.get("controls") or [])
        self.roots = {} if plan.is_testbed else image_roots(plan, "recovery.targets and controls",
                                                            self.sets + self.controls)
        pruned = plan._check_pruned("recovery.pruned", rec.get("pruned") if rec.get("pruned") is not None
                                    else ({first: [0]} if first else {}))
        methods = plan._check_methods("recovery.methods", rec.get("methods") or list(plan.methods)[:1])
        self.models = plan.models(rec.get("variants", ["none", "pruned"]), pruned, methods)
        spec = {k: rec[k] for k in ("steps", "lr", "batch_size", "seed", "seeds", "sample_steps", "guidance",
                                    "copy_threshold") if k in rec}
        self.spec = json.dumps(spec)
        inits = ",".join(rec.get("inits", ["prompt"]))
        # the digest: which photos are attacked, in which order (each edit's subset first), from which prompt files;
        # configs that differ there never share a folder
        what = json.dumps({"targets": self.chosen(), "new_photos": rec.get("new_photos") or 0,
                           "files": {s: plan.sets[s].file for s in self.sets + self.controls}}, sort_keys=True)
        self.tag = (f"s{spec.get('steps', 50)}_lr{spec.get('lr', 0.1)}_b{spec.get('batch_size', 8)}"
                    f"_seed{spec.get('seed', 0)}_n{rec.get('max_targets')}_new{rec.get('new_photos', 0)}"
                    f"_{inits.replace(',', '+')}_{hashlib.sha256(what.encode()).hexdigest()[:8]}")
        self.dir = f"{plan.results}/recovery/{self.tag}"

    def by_path(self) -> dict[str, EvalModel]:
        return {m.path: m for m in self.models}

    def result(self, model: EvalModel) -> str:
        return f"{self.dir}/{model.path}.nc"

    def chunk_count(self) -> int:
        """Jobs per model: the planned targets (photos found or not) in runs of `chunks.recovery`."""
        n = sum(len(v) for v in self.chosen().values()) + int(self.cfg.get("new_photos") or 0)
        return max(1, -(-n // int(self.plan.config["chunks"]["recovery"])))

    def chunk(self, model: EvalModel, k: int | str) -> str:
        return f"{self.dir}/{model.path}/chunk{k}.nc"

    def chunks(self, model: EvalModel) -> list[str]:
        return [self.chunk(model, k) for k in range(self.chunk_count())]

    def chunk_args(self, k: int | str) -> str:
        return f"--chunk {k}:{self.plan.config['chunks']['recovery']}"

    def searches_from(self, model: EvalModel, k: int | str) -> list[str]:
        """The recovery chunk whose searches `model`'s chunk k reuses: an inference-time variant's (Wen) are the
        unedited model's, when that model is attacked too; [] otherwise."""
        from memprune import variants

        base = variants.get(model.variant).attacked_as
        return [self.chunk(m, k) for m in self.models if base and m.variant == base and m.method is None][:1]

    def groups_json(self) -> str:
        return json.dumps({s: self.plan.sets[s].file for s in self.sets + self.controls})

    def subset_of(self, model: EvalModel) -> dict[str, list[int]] | None:
        """{set: prompt indices} whose masks made `model`'s edit; None for a model without one."""
        if model.method is None:
            return None
        col = self.plan.collections[model.collection]
        return {col.set: [int(i) for i in col.subsets[model.subset]]}

    def chosen(self) -> dict[str, list[int]]:
        """The targets of every attacked model, {set: prompt indices}: of a set some edit's subset was drawn from,
        the first max_targets of those subsets' prompts and the first max_targets of the others (held out), so
        each edited model is measured on what its edit was made to remove and on photos of the same kind it was
        not; of any other set (controls included), its first max_targets."""
        n = self.cfg.get("max_targets")
        out = {}
        for s in self.sets + self.controls:
            members = sorted({i for m in self.models if (sub := self.subset_of(m)) for i in sub.get(s, [])})
            rest = [i for i in range(self.plan.sets[s].size) if i not in set(members)]
            out[s] = members[:n] + rest[:n] if members and s in self.sets else list(range(self.plan.sets[s].size))[:n]
        return out

    def subset_args(self, model: EvalModel) -> str:
        sub = self.subset_of(model)
        return f"--subset-json {shlex.quote(json.dumps(sub))}" if sub is not None else ""

    def truth_args(self) -> str:
        return truth_args(self.plan, self.roots) if self.enabled else ""

    def truth_inputs(self) -> list[str]:
        return truth_inputs(self.plan, self.roots) if self.enabled else []

    def args(self) -> str:
        rec = self.cfg
        return (f"--inits {','.join(rec.get('inits', ['prompt']))} "
                + options(max_targets=rec.get("max_targets"), new_photos=rec.get("new_photos") or None,
                          searches_per_call=rec.get("searches_per_call") if rec.get("searches_per_call", 1) > 1
                          else None,
                          **self.plan.image_size()))  # its generations and the fetched photos: config sampling's size

    def targets_args(self) -> str:
        """`--targets-json` of every model's job (a rule parameter: its braces stay out of the shell template)."""
        return f"--targets-json {shlex.quote(json.dumps(self.chosen()))}" if self.enabled else ""

    @property
    def output(self) -> str:
        return f"{self.plan.results}/recovery.nc"

    def targets(self) -> list[str]:
        return ([self.output, f"{self.plan.results}/recovery.csv", f"{self.plan.results}/figures/recovery.png"]
                if self.enabled else [])


@dataclass
class Adversarial:
    """Adversarial fine-tuning (mitigate/adversarial.py): one training job per model when a compared variant is
    trained (the registry's `adversarial`), writing the checkpoint the plan's models point to."""

    plan: Plan

    def __post_init__(self):
        from memprune import variants

        plan, a = self.plan, self.plan.config.get("adversarial") or {}
        self.cfg = a
        used = {v for key in ("evaluate", "attack", "recovery")
                for v in (plan.config.get(key) or {}).get("variants") or []}
        self.enabled = any(variants.get(v).trained for v in used)
        self.sets = plan.file_sets("adversarial.targets", a.get("targets", ["memorized"])) if self.enabled else []
        self.output = plan.trained_checkpoint() if self.enabled else None
        # Stable Diffusion: the targets' fetched photos, and every other listed set's images as the retained data
        self.roots = {} if plan.is_testbed or not self.enabled else image_roots(
            plan, "adversarial.targets",
            list(dict.fromkeys(self.sets + list((plan.config.get("recovery") or {}).get("images") or {}))))

    def truth_args(self) -> str:
        return truth_args(self.plan, self.roots) if self.enabled else ""

    def truth_inputs(self) -> list[str]:
        return truth_inputs(self.plan, self.roots) if self.enabled else []

    def spec_json(self) -> str:
        return json.dumps({k: v for k, v in self.cfg.items() if k not in ("targets", "max_targets", "threads")})

    def args(self) -> str:
        files = " ".join(self.plan.sets[s].file for s in self.sets)
        return f"--prompts-file {files} " + options(max_targets=self.cfg.get("max_targets"),
                                                   threads=self.cfg.get("threads", 2),
                                                   device=None if self.plan.is_testbed else self.plan.model["device"],
                                                   **self.plan.image_size())  # the surrogates' and photos' size
