"""Preflight (`memprune check`): every input from outside the workflow that the requested targets' stages read
(the model's weights, SSCD, the CLIP and Inception weights, the training images per prompt set), each with its
config key, whether it is here, and the command that fetches it. A missing one otherwise stops its GPU job, hours
into a run; rules/common.smk runs the same check before a run's first job. (Prompt files are read when the plan is
built: a missing or bad one stops the plan already, memprune.plan.inputs.)

A path under results/ is a workflow output, made by a rule (a random model, stand-in images, the testbed's data):
reported BUILT, never missing. Pure: no Snakemake import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from memprune.errors import InputError
from memprune.plan.compare import Adversarial, Attack, Detection, Evaluation, Recovery
from memprune.plan.config import LATEST, Plan
from memprune.plan.leaderboard import STACKED, overlay
from memprune.plan.schema import validate_config

REPO = Path(__file__).resolve().parents[3]
OK, MISSING, BUILT = "OK", "MISSING", "BUILT"
# the stages a target needs, each reading its own inputs; a target needs the stages it is built from too
STAGES = ("localize", "evaluate", "attack", "detection", "recovery", "adversarial", "timing")
UPSTREAM = {"evaluate": ("localize",), "attack": ("localize",), "recovery": ("localize",), "timing": ("localize",),
            "leaderboard": STAGES}
# what diffusers' StableDiffusionPipeline.from_pretrained(use_safetensors=True) reads of a hub repository (configs,
# tokenizer, the three weighted components), not the repository's single-file checkpoints and fp16 copies
PIPELINE_FILES = ("*.json", "*.txt", "unet/diffusion_pytorch_model.safetensors",
                  "vae/diffusion_pytorch_model.safetensors",
                  "text_encoder/model.safetensors")
WEIGHTS = re.compile(r"^(diffusion_pytorch_model|model)\.safetensors(\.index\.json)?$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Entry:
    key: str  # the config key
    value: str  # the path or hub id it gives
    what: str
    status: str  # OK, MISSING or BUILT (a workflow output)
    detail: str = ""
    fix: str = ""
    stages: tuple[str, ...] = ()


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


def pipeline_problems(folder: Path) -> list[str]:
    """What a diffusers pipeline directory lacks for `models.load_pipeline` ([] when complete): model_index.json,
    each component's folder, the weights of the weighted ones; a derived testbed's UNet and its base pipeline."""
    from memprune.models import BASE_FILE, base_of

    if (folder / BASE_FILE).is_file():
        try:
            return ([f"unet/{p}" for p in _component_problems(folder / "unet", True)]
                    + pipeline_problems(base_of(folder)))
        except InputError as e:
            return [str(e)]
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return ["model_index.json"]
    problems = []
    for name, spec in index.items():
        if isinstance(spec, list) and None not in spec and name != "safety_checker":  # memprune loads none
            problems += [f"{name}/{p}" for p in _component_problems(folder / name,
                                                                    name in ("unet", "vae", "text_encoder"))]
    return problems


def _component_problems(folder: Path, weighted: bool) -> list[str]:
    if not folder.is_dir():
        return [""]
    if weighted and not (folder / "config.json").is_file():
        return ["config.json"]
    if weighted and not any(WEIGHTS.match(f.name) for f in folder.iterdir()):
        return ["diffusion_pytorch_model.safetensors or model.safetensors"]
    return []


def hub_snapshot(repo_id: str) -> tuple[Path | None, str, bool]:
    """(the cached snapshot folder of a hub model or None, the Hugging Face cache it was looked up in,
    HF_HUB_OFFLINE)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        folder = None
    cache, home = str(constants.HF_HUB_CACHE), str(Path.home())
    return folder, "~" + cache[len(home):] if cache.startswith(home + "/") else cache, bool(constants.HF_HUB_OFFLINE)


def hub_download(repo_id: str, local_dir: str | None = None) -> str:
    includes = " ".join(f"--include '{p}'" for p in PIPELINE_FILES)
    return f"hf download {repo_id} {includes}" + (f" --local-dir {local_dir}" if local_dir else "")


class Preflight:
    """The external inputs of a plan's stages, checked; `check(targets)` for targets (paths, or none: everything)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.evaluation, self.attack, self.detection = Evaluation(plan), Attack(plan), Detection(plan)
        self.recovery, self.adversarial = Recovery(plan), Adversarial(plan)

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
            return self._model()
        if need.startswith("images:"):
            pset = need.split(":", 1)[1]
            return self._images(f"recovery.images.{pset}", plan.config["recovery"]["images"][pset],
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
            return self._images("evaluate.ground_truth", ev["ground_truth"], self.evaluation.memorized,
                                "training images of the memorized prompts")
        if need == "reference_images" and ev.get("reference_images"):
            return self._images("evaluate.reference_images", ev["reference_images"], self.evaluation.nonmemorized,
                                "Frechet reference images of the non-memorized prompts")
        if need == "sscd":
            return self._sscd(ev["sscd"])
        if need == "clip":
            return self._clip(ev["clip"])
        if need == "inception":
            return self._file("evaluate.inception", ev["inception"], "Inception v3 weights (FID)",
                              "save torchvision's inception_v3 IMAGENET1K_V1 state dict there as safetensors, or set "
                              "evaluate.inception: null (Frechet distance in the CLIP image tower)")
        return None

    def _file(self, key: str, value: str, what: str, fix: str) -> Entry:
        path = self.plan.repo_path(value)
        if value.startswith("results/"):
            return Entry(key, value, what, BUILT, "a workflow output (under results/): made by its rule")
        if Path(path).is_file():
            return Entry(key, value, what, OK)
        return Entry(key, value, what, MISSING, "no such file" + (" (a directory)" if Path(path).is_dir() else ""), fix)

    def _sscd(self, value: str) -> Entry:
        from memprune.evaluate.metrics import SSCD_URL

        name = (Path(value).name if re.fullmatch(r"sscd_disc_\w+\.torchscript\.pt", Path(value).name)
                else Path(SSCD_URL).name)
        parent = f"mkdir -p {Path(value).parent} && " if str(Path(value).parent) != "." else ""
        return self._file("evaluate.sscd", value, "the SSCD copy detector",
                          f"{parent}curl -L -o {value} {SSCD_URL.rsplit('/', 1)[0]}/{name}  (or set evaluate.sscd: "
                          "null: SSIM)")

    def _clip(self, clip: dict) -> Entry:
        from memprune.evaluate.metrics import CLIP_HELP, CLIP_HUB

        what = f"the CLIP model of prompt following ({clip.get('name') or 'an open_clip folder'})"
        if clip.get("use_retrained"):
            return Entry("evaluate.clip.use_retrained", "results/testbed/clip", what, BUILT,
                         "made by the rule train_clip")
        value = clip.get("weights")
        if value and Path(self.plan.repo_path(value)).is_dir():
            ok = (Path(self.plan.repo_path(value)) / "open_clip_config.json").is_file()
            return Entry("evaluate.clip.weights", value, what, OK if ok else MISSING,
                         "" if ok else "no open_clip_config.json in it",
                         "an open_clip local-dir folder (open_clip_config.json and its weights), as "
                         "resources/testbed_clip")
        if not clip.get("name"):
            return Entry("evaluate.clip.weights", str(value), what, MISSING,
                         "no such folder, and no evaluate.clip.name",
                         "set evaluate.clip.weights to an open_clip local-dir folder, or name a model with its weights "
                         "file")
        fix = CLIP_HELP
        if clip["name"] in CLIP_HUB and value:
            repo_id, folder = CLIP_HUB[clip["name"]][1], Path(value).parent
            fix = f"hf download {repo_id} open_clip_model.safetensors --local-dir {folder}"
            if Path(value).name != "open_clip_model.safetensors":
                fix += f" && mv {folder / 'open_clip_model.safetensors'} {value}"
        return self._file("evaluate.clip.weights", str(value), what, fix)

    def _images(self, key: str, value: str, prompts_file: str | None, what: str) -> Entry:
        """A directory <root>/<index>/*.png (index: 0-based line of the prompt file): OK with one prompt's image at
        least (dead links are expected: `memprune fetch-training-images` lists them in fetch_report.csv)."""
        from memprune.plan.inputs import read_prompt_file

        if value.startswith("results/"):
            return Entry(key, value, what, BUILT, "a workflow output (under results/): made by its rule")
        root = Path(self.plan.repo_path(value))
        have = sum(1 for d in root.iterdir() if d.is_dir() and d.name.isdigit()
                   and (any(d.glob("*.png")) or any(d.glob("*.jpg")))) if root.is_dir() else 0
        try:
            total = f" of {len(read_prompt_file(prompts_file))}" if prompts_file else ""
        except (OSError, InputError):
            total = ""
        if have:
            return Entry(key, value, what, OK, f"{have}{total} prompts have an image")
        fetchable = prompts_file and Path(prompts_file).suffix.lower() in (".jsonl", ".csv")
        fix = (f"memprune fetch-training-images --prompts {prompts_file} --root {value}  (where a node has internet)"
               if fetchable
               else f"put each prompt's image at {value}/<index>/0.png, index = its 0-based line in {prompts_file}")
        return Entry(key, value, what, MISSING, "no <index>/*.png in it" if root.is_dir() else "no such directory", fix)

    def _model(self) -> Entry:
        plan, key, what = self.plan, "model.path", "the diffusers pipeline"
        value = str(plan.model["path"])
        if (plan.config["testbed"]["use_retrained"] or value.startswith("results/")
                or plan.model_dir.startswith("results/")):
            return Entry(key, plan.model_dir, what, BUILT, "a workflow output (under results/): made by its rule")
        shipped = plan.repo / "config" / f"{plan.name}.yaml"  # the hub id of the shipped config of this model, if any
        hint = (str((yaml.safe_load(shipped.read_text()) or {}).get("model", {}).get("path", ""))
                if shipped.is_file() else "")
        hint = hint if HUB_ID.match(hint) and not (plan.repo / hint).exists() else "<hub id>"
        local = Path(plan.model_dir)
        if local.exists():
            problems = pipeline_problems(local)
            if not problems:
                return Entry(key, value, what, OK, "a diffusers pipeline directory")
            return Entry(key, value, what, MISSING, f"incomplete pipeline directory: no {', '.join(problems)}",
                         "restore it: git checkout -- " + value if plan.is_testbed else hub_download(hint, value))
        if not HUB_ID.match(value) or (plan.repo / value.split("/")[0]).is_dir() or Path(value.split("/")[0]).is_dir():
            return Entry(key, value, what, MISSING, "no such directory", hub_download(hint, value))
        snapshot, cache, offline = hub_snapshot(value)
        problems = pipeline_problems(snapshot) if snapshot else []
        mode = ("HF_HUB_OFFLINE=1: jobs read only this cache" if offline else
                "HF_HUB_OFFLINE unset: each job would download it where a node reaches the hub")
        if snapshot and not problems:
            return Entry(key, value, what, OK, f"in the Hugging Face cache {cache}")
        found = f"incomplete in the Hugging Face cache {cache} (no {', '.join(problems)})" if snapshot else \
            f"not in the Hugging Face cache {cache}" + ("" if value == hint else ", and no such directory")
        fix = (f"{'HF_HUB_OFFLINE=0 ' * offline}{hub_download(value)}\n(into that cache, which the jobs must share: "
               f"export HF_HOME; or add --local-dir models/{plan.name} and set model.path: models/{plan.name} in an "
               "overlay, docs/cluster.md)")
        return Entry(key, value, what, MISSING, f"{found} ({mode})", fix)


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
