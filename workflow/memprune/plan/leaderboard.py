"""The leaderboard's half of the plan: which models it lists (every model evaluation, the attack and recovery
compare), the files it reads, and the configs `results/leaderboard.csv` stacks (`leaderboard.configs`)."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from memprune.plan.compare import Adversarial, Attack, Evaluation, Recovery
from memprune.plan.config import Plan, key_error

STACKED = "results/leaderboard.csv"
# The config keys that decide the files every config's rules write to the same path: the shipped testbed's dataset,
# model and CLIP under results/testbed/ (rules testbed_data, train_testbed, train_clip). The stack builds them once,
# with the loaded config's rules, so a stacked config must agree on these keys (a random model's path names all it
# depends on).
SHARED_KEYS = (("testbed", "dataset"), ("testbed", "train"), ("evaluate", "clip", "train"))


def overlay(base: dict, top: dict) -> dict:
    """`top` over `base`, mappings merged key by key (as Snakemake overlays several --configfile files)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config(paths: list[Path]) -> dict:
    """Config files overlaid in order, as a Snakemake run with these --configfile files loads them (not validated)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    cfg = {}
    for path in paths:
        try:
            cfg = overlay(cfg, yaml.load(Path(path).read_text(), Loader=loader) or {})
        except (OSError, yaml.YAMLError) as e:
            raise key_error("leaderboard.configs", f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    return cfg


def config_model_name(paths: list[Path]) -> str:
    """The model name (`model.name`) that config files, overlaid in order, run (the schema's defaults filled in)."""
    from memprune.plan.schema import validate_config

    return str(validate_config(read_config(paths))["model"]["name"])


def _get(cfg: dict, keys: tuple[str, ...]):
    for k in keys:
        cfg = (cfg or {}).get(k)
    return cfg


@dataclass
class Leaderboard:
    plan: Plan
    evaluation: Evaluation
    attack: Attack
    recovery: Recovery
    adversarial: Adversarial

    def __post_init__(self):
        seen = {}
        for m in self.evaluation.models + self.attack.models + self.recovery.models:
            seen.setdefault(m.id, m)
        self.models = list(seen.values())
        self.output = f"{self.plan.results}/leaderboard.csv"
        self.timing = f"{self.plan.results}/timing.nc"
        self.figure = f"{self.plan.results}/figures/leaderboard.png"

    def attacked(self):
        return [m for m in self.models if m.id in {a.id for a in self.attack.models}]

    def models_json(self) -> str:
        plan, out = self.plan, {}
        for m in self.models:
            entry = {"variant": m.variant, "method": m.method, "subset": m.subset_label}
            if m.method is not None:
                col = plan.collections[m.collection]  # the subset's prompts, read by the job (a detected set's
                entry["prompts_file"] = plan.sets[col.set].file  # file exists once detection ran)
                entry["indices"] = [int(i) for i in col.subsets[m.subset]]
                entry["edit_prompts"] = len(col.subsets[m.subset])
            elif m.checkpoint:  # a trained edit (adversarial fine-tuning): its job's benchmark and target count
                n = self.adversarial.cfg.get("max_targets")
                entry["edit_benchmark"] = plan.bench("adversarial", plan.trained_tag())
                entry["edit_prompts"] = sum(min(plan.sets[s].size, n or plan.sets[s].size)
                                            for s in self.adversarial.sets)
            out[m.id] = entry
        return json.dumps(out)

    def timing_json(self) -> str:
        """{model id: {variant, checkpoint, params}}: what `memprune leaderboard-timing` loads for each model."""
        plan = self.plan
        return json.dumps({m.id: {"variant": m.variant, "checkpoint": plan.checkpoint_of(m),
                                  "params": plan.variant_params(m.variant)} for m in self.models})

    def timing_checkpoints(self) -> list[str]:
        return list(dict.fromkeys(c for c in map(self.plan.checkpoint_of, self.models) if c))

    def timing_args(self) -> str:
        """The timed prompts (the first `leaderboard.timing.prompts` of the evaluation's memorized set) and rounds."""
        timing = self.plan.config["leaderboard"]["timing"]  # the schema's defaults filled in
        return (f"--prompts-file {shlex.quote(str(self.evaluation.memorized))} --prompts {timing['prompts']} "
                f"--rounds {timing['rounds']}")

    def inputs(self) -> dict:
        inputs = {"eval": self.evaluation.targets()[0], "attack": [self.attack.result(m) for m in self.attacked()],
                  "timing": self.timing}
        if self.recovery.enabled:
            inputs["recovery"] = self.recovery.output
        if self.plan.derived and self.plan.derived["kind"] == "planted":
            inputs["localization"] = f"{self.plan.results}/localization.nc"
        return inputs

    def args(self) -> str:
        """The options naming the stages' files (the attack's per model: MODEL_ID=FILE)."""
        attack = " ".join(shlex.quote(f"{m.id}={self.attack.result(m)}") for m in self.attacked())
        inputs = self.inputs()
        parts = [f"--eval {inputs['eval']}", f"--attack {attack}", f"--timing {inputs['timing']}"]
        if "recovery" in inputs:
            parts.append(f"--recovery {inputs['recovery']}")
        if "localization" in inputs:
            parts.append(f"--localization {inputs['localization']}")
        mem = self.plan.config["evaluate"].get("memorized")
        if mem:
            parts.append(f"--eval-kind {shlex.quote(Path(mem).stem if '/' in mem else mem)}")
        return " ".join(parts)

    @functools.cached_property
    def _stacked(self) -> dict[str, tuple[list[str], dict | None]]:
        """{model name: (its config files, its config as its own run loads it)} of `leaderboard.configs` (an entry: a
        file, or files overlaid in order), the loaded config's own model among them (no files, no config); read
        once."""
        from memprune.plan.schema import validate_config

        configs = (self.plan.config.get("leaderboard") or {}).get("configs") or []
        out = {}
        for entry in configs:
            files = [entry] if isinstance(entry, str) else list(entry)
            paths = []
            for c in files:
                path = Path(self.plan.repo_path(c))
                if not path.exists():
                    raise key_error("leaderboard.configs", f"{c}: no such config file")
                paths.append(path)
            raw = read_config(paths)
            checked = validate_config(copy.deepcopy(raw))
            name = str(checked["model"]["name"])
            self._check_stackable(name, " + ".join(files), checked, out)
            out[name] = ([str(p) for p in paths], raw if name != self.plan.name else None)
        out.setdefault(self.plan.name, ([], None))
        return out

    def _check_stackable(self, name: str, files: str, checked: dict, stacked: dict) -> None:
        """A config the stack can hold beside those before it: its own model, its own rule names, and this config's
        values of SHARED_KEYS."""
        if name in stacked:
            raise key_error("leaderboard.configs",
                            f"{files} and {' + '.join(stacked[name][0])} both run model {name!r}")
        clash = next((n for n in stacked if rule_prefix(n) == rule_prefix(name)), None)
        if clash is not None:
            raise key_error("leaderboard.configs", f"models {clash!r} and {name!r} ({files}) would share the rule "
                            f"names {rule_prefix(name)}*: rename one (model.name)")
        for keys in SHARED_KEYS if name != self.plan.name else ():
            if _get(checked, keys) != _get(self.plan.config, keys):
                raise key_error("leaderboard.configs", f"{files} sets {'.'.join(keys)} to {_get(checked, keys)}, this "
                                f"config to {_get(self.plan.config, keys)}: the stack builds what it decides once "
                                "(results/testbed/), so every stacked config must agree")

    def stacked(self) -> dict[str, list[str]]:
        """{model name: its config files} of `leaderboard.configs`, the loaded config's own model among them (built
        by this config's rules, no files); every other by its module (rules/leaderboard.smk)."""
        return {name: files for name, (files, _) in self._stacked.items()}

    def stacked_inputs(self) -> list[str]:
        return [f"results/{name}/leaderboard.csv" for name in self.stacked()]

    def others(self) -> dict[str, dict]:
        """{model name: its config, overlaid as its own run loads it (Snakemake validates it as it reads the
        Snakefile)} of the stacked models other than this config's: each is a module of this workflow."""
        return {name: copy.deepcopy(cfg) for name, (_, cfg) in self._stacked.items() if cfg is not None}


def rule_prefix(name: str) -> str:
    """The prefix of a stacked model's rule names, `<name>__` (no rule name holds `__`, so none can clash), with
    what a rule name cannot hold (`model.name` allows `.` and `-`) as `_`."""
    return re.sub(r"\W", "_", name) + "__"
