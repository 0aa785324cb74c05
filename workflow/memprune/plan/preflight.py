"""Preflight (`memprune check`): every input from outside the workflow that the requested targets' stages read
(the model's weights, SSCD, the CLIP and Inception weights, the training images per prompt set), each with its
config key, whether it is here, and the command that fetches it. A missing one otherwise stops its GPU job, hours
into a run; rules/common.smk runs the same check before a run's first job. (Prompt files are read when the plan is
built: a missing or bad one stops the plan already, memprune.plan.inputs.)

A path under results/ is a workflow output, made by a rule (a random model, stand-in images, the testbed's data):
reported BUILT, never missing. Pure: no Snakemake import.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from memprune.errors import InputError
from memprune.plan.compare import Adversarial, Attack, Detection, Evaluation, Recovery
from memprune.plan.config import LATEST, Plan
from memprune.plan.external import BUILT, MISSING, OK, Entry, ExternalInputs  # noqa: F401 (re-exported)
from memprune.plan.leaderboard import STACKED, overlay
from memprune.plan.schema import validate_config

REPO = Path(__file__).resolve().parents[3]
# the stages a target needs, each reading its own inputs; a target needs the stages it is built from too
STAGES = ("localize", "evaluate", "attack", "detection", "recovery", "adversarial", "timing")
UPSTREAM = {"evaluate": ("localize",), "attack": ("localize",), "recovery": ("localize",), "timing": ("localize",),
            "leaderboard": STAGES}


def read_configs(paths: list[str | Path] | None = None, repo: Path = REPO) -> tuple[dict, list[str]]:
    """The config a Snakemake run with these --configfile files plans: the files overlaid in order (config.yaml when
    none is given) and validated, the schema's defaults filled in (as the Snakefile does). Returns it and the files."""
    files = [Path(p) for p in paths or []]
    if not files:
        files = [Path("config.yaml") if Path("config.yaml").is_file() else repo / "config.yaml"]
    config = {}
    for path in files:
        try:
            config = overlay(config, yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"--configfile {path}: cannot be read ({type(e).__name__}: {e}); targets go before "
                             "--configfile, which takes every later word") from None
    return validate_config(config), [str(p) for p in files]


class Preflight:
    """The external inputs of a plan's stages, checked; `check(targets)` for targets (paths, or none: everything)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.evaluation, self.attack, self.detection = Evaluation(plan), Attack(plan), Detection(plan)
        self.recovery, self.adversarial = Recovery(plan), Adversarial(plan)
        self.inputs = ExternalInputs(plan)

    # ------------------------------------------------------------------------------------------ targets -> stages

    def _owners(self) -> list[tuple[str, str | None]]:
        """(path prefix, the stage writing under it; None: made from nothing external), longest prefix first."""
        p, r = self.plan, self.plan.results
        stage_paths = {
            "localize": [p.act_dir, f"{r}/masks", f"{r}/pruned", p.layers_file, *p.analysis_outputs.values(), *LATEST,
                         f"{r}/localization.nc", *(f"{r}/{m}" for m, meth in p.methods.items() if meth.per_prompt)],
            "evaluate": [self.evaluation.dir, *self.evaluation.targets()],
            "attack": [self.attack.dir, *self.attack.targets()],
            "detection": [p.det_dir, *self.detection.targets()],
            "recovery": [f"{r}/recovery", f"{r}/recovery.nc", f"{r}/recovery.csv", f"{r}/figures/recovery.png"],
            "adversarial": [f"{r}/adversarial"], "timing": [f"{r}/timing.nc"],
            "leaderboard": [f"{r}/leaderboard.csv", f"{r}/figures/leaderboard.png", STACKED],
            None: ["results/random_models", f"{r}/stand_in_images", f"{r}/data", f"{r}/model", "results/testbed/data",
                   "results/testbed/model", "results/testbed/clip"],
        }
        owners = [(path, stage) for stage, paths in stage_paths.items() for path in paths]
        return sorted(owners, key=lambda o: -len(o[0]))

    def stages(self, targets: list[str] | None = None) -> list[str]:
        """The stages `targets` need (with those they are built from); none given: every stage the config builds.
        A target the plan does not name (a rule name, another file) is checked as everything but `all`."""
        wanted = set()
        owners = self._owners()
        for target in (self.plan.targets() if targets == ["all"] else targets) if targets else [None]:
            path = str(target).removeprefix("./") if target else None
            stage = next((s for prefix, s in owners if path and (path == prefix or path.startswith(prefix + "/"))),
                         "model" if path and path.startswith("results/") else "all")
            wanted |= set(STAGES) if stage == "all" else {stage} if stage else set()
        for stage in list(wanted):
            wanted |= set(UPSTREAM.get(stage, ()))
        compared = {v for key in ("evaluate", "attack", "recovery") if key in wanted
                    for v in self.plan.config[key].get("variants") or []}
        if self.adversarial.enabled and ("adversarial" in compared or "timing" in wanted):  # its fine-tuned model
            wanted.add("adversarial")
        off = {"recovery": not self.recovery.enabled, "adversarial": not self.adversarial.enabled}
        return [s for s in STAGES if s in wanted and not off.get(s)] or (["model"] if wanted else [])

    # ------------------------------------------------------------------------------------------ stages -> inputs

    def _needs(self, stage: str) -> list[str]:
        """The inputs a stage's own jobs read (ids of `_entry`)."""
        ev, rec, adv = self.evaluation.cfg, self.recovery, self.adversarial
        needs = ["model"]
        if ev.get("sscd") and stage in ("evaluate", "attack", "recovery", "adversarial"):
            needs.append("sscd")  # the copy metric of every stage deciding copies (rules/common.smk, COPY_SSCD)
        if stage == "evaluate":
            needs.append("clip")  # prompt files: read by the plan
            needs += ["ground_truth"] if ev.get("ground_truth") or not self.plan.is_testbed else ["testbed_data"]
            needs += (["inception"] * bool(ev.get("inception"))
                      + ["reference_images"] * (ev["fid_reference"] == "images"))
        if stage == "recovery" and rec.enabled:
            needs += [f"images:{s}" for s in rec.roots] or ["testbed_data"]
        if stage == "adversarial" and adv.enabled:
            needs += [f"images:{s}" for s in adv.roots] or ["testbed_data"]
        return needs

    def check(self, targets: list[str] | None = None) -> list[Entry]:
        """Every input the stages of `targets` need (none: everything the config builds), checked, in stage order."""
        by_id: dict[str, list[str]] = {}
        for stage in self.stages(targets):
            for need in self._needs(stage):
                by_id.setdefault(need, [])
                if stage not in by_id[need]:
                    by_id[need].append(stage)
        entries = [(self._entry(need), tuple(stages)) for need, stages in by_id.items()]
        return [replace(e, stages=stages) for e, stages in entries if e is not None]

    def _entry(self, need: str) -> Entry | None:
        plan, ev = self.plan, self.evaluation.cfg
        if need == "model":
            return self.inputs.model()
        if need.startswith("images:"):
            pset = need.split(":", 1)[1]
            return self.inputs.images(f"recovery.images.{pset}", plan.config["recovery"]["images"][pset],
                                plan.sets[pset].file,
                                f"training images of the {pset} prompts")
        if need == "testbed_data":
            return Entry("testbed.dataset", plan.data_dir, "the testbed's dataset", BUILT,
                         "made by the workflow (rules/testbed.smk)")
        if need == "ground_truth" and not ev.get("ground_truth"):
            return Entry("evaluate.ground_truth", "null", "training images of the memorized prompts", MISSING,
                         "the model is no testbed, whose dataset would be the ground truth",
                         "set evaluate.ground_truth to its directory <root>/<index>/*.png (`memprune "
                         "fetch-training-images`)")
        if need == "ground_truth":
            return self.inputs.images("evaluate.ground_truth", ev["ground_truth"], self.evaluation.memorized,
                                "training images of the memorized prompts")
        if need == "reference_images" and ev.get("reference_images"):
            return self.inputs.images("evaluate.reference_images", ev["reference_images"], self.evaluation.nonmemorized,
                                "Frechet reference images of the non-memorized prompts")
        if need == "sscd":
            return self.inputs.sscd(ev["sscd"])
        if need == "clip":
            return self.inputs.clip(ev["clip"])
        if need == "inception":
            return self.inputs.file("evaluate.inception", ev["inception"], "Inception v3 weights (FID)",
                              "save torchvision's inception_v3 IMAGENET1K_V1 state dict there as safetensors, or set "
                              "evaluate.inception: null (Frechet distance in the CLIP image tower)")
        return None

def format_report(entries: list[Entry], scope: str, only_missing: bool = False) -> str:
    """The entries as lines: status, key, value, what and the stages needing it; the detail and, when missing, the
    fix."""
    lines = [f"memprune check: {scope}"]
    for e in entries:
        if only_missing and e.status != MISSING:
            continue
        lines.append(f"{e.status:<8} {e.key}: {e.value}")
        lines.append(f"{'':9}{e.what}, read by {', '.join(e.stages)}" + (f": {e.detail}" if e.detail else ""))
        if e.fix and e.status == MISSING:
            lines += [f"{'':9}{'fix: ' if i == 0 else '     '}{line}" for i, line in enumerate(e.fix.splitlines())]
    n = sum(e.status == MISSING for e in entries)
    lines.append(f"{n} of {len(entries)} external inputs missing" if n
                 else f"all {len(entries)} external inputs present")
    return "\n".join(lines)


def scope_of(preflight: Preflight, targets: list[str] | None, configs: list[str] | None = None) -> str:
    what = ", ".join(targets) if targets else "everything the config builds"
    if targets == ["all"]:
        what = f"rule all ({', '.join(preflight.plan.targets())})"
    files = f"{' '.join(configs)} (model {preflight.plan.name})" if configs else f"model {preflight.plan.name}"
    return f"{files}, for {what} (stages: {', '.join(preflight.stages(targets)) or 'none'})"
