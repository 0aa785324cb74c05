"""The inputs a run reads from outside the workflow, each checked where the config points: the model's pipeline
(a directory or a hub id in the Hugging Face cache), SSCD, CLIP, Inception, the training images of a prompt set.
Each check gives an `Entry` with its config key, status and the command that fetches it (`memprune.plan.preflight`
decides which a run's targets need). Pure: no Snakemake import."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from memprune.errors import InputError

OK, MISSING, BUILT = "OK", "MISSING", "BUILT"
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


class ExternalInputs:
    """One `Entry` per external input of a plan (`memprune.plan.config.Plan`), found or missing, with its fix."""

    def __init__(self, plan):
        self.plan = plan

    def file(self, key: str, value: str, what: str, fix: str) -> Entry:
        path = self.plan.repo_path(value)
        if value.startswith("results/"):
            return Entry(key, value, what, BUILT, "a workflow output (under results/): made by its rule")
        if Path(path).is_file():
            return Entry(key, value, what, OK)
        return Entry(key, value, what, MISSING, "no such file" + (" (a directory)" if Path(path).is_dir() else ""), fix)

    def sscd(self, value: str) -> Entry:
        from memprune.evaluate.metrics import SSCD_URL

        name = (Path(value).name if re.fullmatch(r"sscd_disc_\w+\.torchscript\.pt", Path(value).name)
                else Path(SSCD_URL).name)
        parent = f"mkdir -p {Path(value).parent} && " if str(Path(value).parent) != "." else ""
        return self.file("evaluate.sscd", value, "the SSCD copy detector",
                          f"{parent}curl -L -o {value} {SSCD_URL.rsplit('/', 1)[0]}/{name}  (or set evaluate.sscd: "
                          "null: SSIM)")

    def clip(self, clip: dict) -> Entry:
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
        return self.file("evaluate.clip.weights", str(value), what, fix)

    def images(self, key: str, value: str, prompts_file: str | None, what: str) -> Entry:
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

    def model(self) -> Entry:
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
