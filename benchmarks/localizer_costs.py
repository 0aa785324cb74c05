"""What each localizer's masks cost per prompt and per subset, read from the Snakemake benchmark files of one run
(benchmarks/<model>/...; wall seconds `s` and CPU seconds `cpu_time` of each job, so the figures come from the
same run and the same machine load):

* Wanda (and the activation control): capture (the chunk jobs of the collection's prompt set, per prompt, plus
  the null-prompt run) + its masks job per subset;
* NeMo: its search (the neurons job of the prompt set, per searched prompt) + calibration + masks per subset.
Prints one JSON line per (localizer, collection) and the ratio NeMo / Wanda per prompt.

    python -m benchmarks.localizer_costs --config config.yaml [--root .]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memprune.bench import ROOT, default_config
from memprune.evaluate.aggregate import benchmark_record


def read(path: Path) -> dict:
    record = benchmark_record(path)
    if record is None:
        raise SystemExit(f"{path}: no Snakemake benchmark record (run the workflow for this config first)")
    return {"s": record["s"], "cpu": record["cpu_time"]}


def main() -> None:
    from memprune.plan.chunks import nemo_chunks
    from memprune.plan.config import Plan

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"), help="the run's config (schema defaults filled)")
    ap.add_argument("--root", default=".", help="the workflow's directory (where benchmarks/ lies)")
    args = ap.parse_args()
    plan = Plan(default_config(args.config), ROOT)
    root = Path(args.root)
    per_prompt = {}
    for name, m in plan.methods.items():
        if m.reference:
            continue
        for cname, col in plan.collections.items():
            n_sub, size = len(col.subsets), len(col.subsets[0])
            masks = read(root / plan.masks_bench(name, cname))
            if m.per_prompt:
                searches = [read(root / plan.bench(f"nemo/{name}/{m.tag}", f"{col.set}_chunk{k}"))
                            for k in range(len(nemo_chunks(plan, col.set)))]
                cal = read(root / plan.bench(f"nemo/{name}/{m.tag}", "calibration"))
                n = len(plan.neuron_prompts(col.set))
                prompt_s, prompt_cpu = sum(c["s"] for c in searches) / n, sum(c["cpu"] for c in searches) / n
                extra = {"calibration_s": cal["s"]}
            elif m.statistics:
                n_chunks = (plan.sets[col.set].size + plan.chunk_size() - 1) // plan.chunk_size()
                chunks = [read(root / plan.capture_bench(col.set, k)) for k in range(n_chunks)]
                n = plan.sets[col.set].size
                prompt_s, prompt_cpu = sum(c["s"] for c in chunks) / n, sum(c["cpu"] for c in chunks) / n
                extra = {"null_capture_s": read(root / plan.capture_bench(None))["s"]}
            else:
                prompt_s = prompt_cpu = 0.0
                extra = {}
            per_prompt[name, cname] = prompt_s
            print(json.dumps({"localizer": name, "collection": cname, "seconds_per_prompt": round(prompt_s, 2),
                              "cpu_seconds_per_prompt": round(prompt_cpu, 2),
                              "masks_seconds_per_subset": round(masks["s"] / n_sub, 2),
                              "seconds_per_subset": round(prompt_s * size + masks["s"] / n_sub, 1), **extra}))
    for (name, cname), s in per_prompt.items():
        if plan.methods[name].per_prompt and per_prompt.get(("wanda", cname)):
            print(json.dumps({"ratio": f"{name} / wanda seconds per prompt", "collection": cname,
                              "value": round(s / per_prompt["wanda", cname], 1)}))


if __name__ == "__main__":
    main()
