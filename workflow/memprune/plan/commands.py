"""How a plan's jobs are called (`PlanCommands`, a part of `memprune.plan.config.Plan`): sampling and variant
arguments, the compared models and their checkpoints, the adversarial fine-tune's folder."""

from __future__ import annotations

import hashlib
import json

from memprune.plan.types import EvalModel, key_error, options


class PlanCommands:
    """Command arguments and compared models, from a plan's config, methods and paths."""

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
