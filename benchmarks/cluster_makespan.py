"""A config's DAG on N GPUs, simulated from per-call costs: each GPU job's seconds from the work the config gives
it (prompts, images, searches per job) times the costs docs/cluster.md measured on one H200 (SD1.5 architecture,
fp16: 0.343 s per generated image at batch 8, 3.36 ms per UNet sample-call, capture 0.415 s per prompt; a
backward pass twice a forward), NeMo's searches at their worst case (every channel of the initial set refined:
`max_refine`). Jobs without a model (masks, merges, tables) take no GPU time. The DAG is Snakemake's own
(`snakemake --dag`). Greedy list scheduling, longest remaining path first, on N GPUs; prints per N the makespan,
the ideal (GPU-hours / N), the critical path, and the largest job, for the config as it is and with every
per-prompt stage in one job per set or model (`chunks` at their maximum: NeMo and recovery as they ran before
they were cut into jobs).

    python -m benchmarks.cluster_makespan --configfile config/sd15.yaml --gpus 1,8,64
"""

from __future__ import annotations

import argparse
import heapq
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from memprune.bench import ROOT, int_list

IMAGE_S = 0.343  # one generated image: PNDM 50 steps with CFG (102 sample-calls) and the VAE decode, batch 8
CALL_S = 3.36e-3  # one UNet sample-call
CAPTURE_S = 0.415  # one captured prompt (generation with the hooks)
SEARCH_STEP_S = 3 * CALL_S  # one sample of a recovery search step: forward and backward
WEN_FACTOR = 1.3  # Wen's embedding optimisation on its model (docs/cluster.md)
BASE_SAMPLING_STEPS = 50


def load_config(configfiles: list[str], overlay: dict | None = None) -> dict:
    import yaml

    from memprune.plan.leaderboard import overlay as overlay_configs
    from memprune.plan.schema import validate_config

    merged = {}
    for f in configfiles:
        merged = overlay_configs(merged, yaml.safe_load((ROOT / f).read_text()))
    return validate_config(overlay_configs(merged, overlay or {}))


def _images_seconds(n_images: int, steps: int) -> float:
    return n_images * IMAGE_S * steps / BASE_SAMPLING_STEPS


def job_seconds(rule: str, wildcards: dict, cfg: dict, plan=None) -> float | None:
    """A GPU job's seconds under `cfg` (an upper bound where the work varies: NeMo's worst case, every planned
    recovery target's photo found); 0 for a job without a model; None for a model job not modelled (scoring: SSCD
    and CLIP, not measured). `plan` (a `memprune.plan.config.Plan` of `cfg`) gives the prompts and targets per job."""
    from memprune.plan.chunks import nemo_chunks
    from memprune.plan.compare import Recovery
    from memprune.plan.config import Plan

    plan = plan or Plan(cfg, ROOT)
    s, n = cfg["sampling"], cfg["chunks"]
    if rule == "capture_chunk":
        return cfg["activations"]["chunk_size"] * CAPTURE_S * s["steps"] / BASE_SAMPLING_STEPS
    if rule == "capture_null":
        return CAPTURE_S
    nemo = {**cfg["localizers"].get("nemo", {})}
    if rule == "nemo_calibration":
        return nemo.get("max_calibration", 200) * nemo.get("seeds", 10) * CALL_S
    if rule == "nemo_search":  # per prompt: seeds x (1 + 17 selection rounds + 7 layers + max_refine neurons)
        prompts = len(nemo_chunks(plan, wildcards["pset"])[int(wildcards.get("chunk", 0))])
        return prompts * nemo.get("seeds", 10) * (1 + 17 + 7 + nemo.get("max_refine", 200)) * CALL_S
    if rule == "eval_sample":
        ev = cfg["evaluate"]
        prompts = (ev.get("max_memorized") or 500) + (ev.get("max_nonmemorized") or 0)
        wen = WEN_FACTOR if wildcards.get("evalmodel", "").startswith("wen") else 1.0
        return _images_seconds(prompts * len(ev["seeds"]), s["steps"]) * wen
    if rule == "attack_generate":
        a = cfg["attack"]
        return _images_seconds(a["chunk_size"] * a["n_samples"], a.get("steps") or s["steps"])
    if rule == "detection_scores":
        d = cfg["detection"]
        return 1000 * d["n_seeds"] * d["score_steps"] * 2 * CALL_S
    if rule == "recovery_search":
        r, rec = cfg["recovery"], Recovery(plan)
        planned = sum(len(v) for v in rec.chosen().values()) + int(r.get("new_photos") or 0)
        targets = min(n["recovery"], planned - int(wildcards.get("chunk", 0)) * n["recovery"])
        reused = wildcards["recmodel"].startswith("wen")  # Wen's chunks reuse the unedited model's searches
        per_start = ((0 if reused else r["steps"] * r["batch_size"] * SEARCH_STEP_S)
                     + 2 * len(r["seeds"]) * r["sample_steps"] * 2 * CALL_S)  # the search, then two generations
        return targets * len(r.get("inits", ["prompt"])) * per_start
    if rule == "leaderboard_timing":
        t = cfg["leaderboard"]["timing"]
        models = 25
        return models * (t["rounds"] + 1) * _images_seconds(t["prompts"], s["steps"])
    if rule == "adversarial_finetune":
        a = cfg["adversarial"]
        targets = a.get("max_targets") or 500
        searches = a["rounds"] * targets * a["search_steps"] * a["search_batch"] * SEARCH_STEP_S
        steps = a["rounds"] * -(-targets // a["targets_per_step"]) * a["updates_per_step"]
        updates = steps * (a["retain_batch"] + 4 * a["targets_per_step"] * a["noises"]) * SEARCH_STEP_S
        return searches + updates
    if rule in ("eval_score",):
        return None
    return 0.0


def snakemake_dag(configfiles: list[str], target: str, overlay: dict | None = None) -> tuple[list, list]:
    """(jobs [(rule, wildcards)], edges [(from, to)]) of `snakemake --dag` for `target` under the configs."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = []
        if overlay:
            path = Path(tmp) / "overlay.json"
            path.write_text(json.dumps(overlay))
            extra = [str(path)]
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--dag", "--cores", "1", target, "--configfile",
                               *configfiles, *extra], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    jobs, index, edges = [], {}, []
    for node, label in re.findall(r"^\s*(\d+)\[label = \"([^\"]*)\"", proc.stdout, re.M):
        rule, *pairs = label.split("\\n")
        index[node] = len(jobs)
        jobs.append((rule, dict(p.split(": ", 1) for p in pairs if ": " in p)))
    edges = [(index[a], index[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", proc.stdout, re.M)]
    return jobs, edges


def simulate(seconds: list[float], gpu: list[bool], edges: list, n_gpus: int) -> dict:
    """List scheduling of the DAG on `n_gpus`: a ready GPU job with the longest remaining path first; jobs without
    a GPU run at once. Returns makespan, ideal, critical path (seconds)."""
    n = len(seconds)
    succ, preds = [[] for _ in range(n)], [0] * n
    for a, b in edges:
        succ[a].append(b)
        preds[b] += 1
    order, indeg, stack = [], preds[:], [i for i in range(n) if preds[i] == 0]
    while stack:
        i = stack.pop()
        order.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                stack.append(j)
    tail = [0.0] * n  # the longest path from a job's start to the end
    for i in reversed(order):
        tail[i] = seconds[i] + max((tail[j] for j in succ[i]), default=0.0)
    remaining, ready, free, clock = preds[:], [], n_gpus, 0.0
    events = []  # (finish time, job)

    def release(i, t):
        if gpu[i]:
            heapq.heappush(ready, (-tail[i], i))
        else:
            heapq.heappush(events, (t + seconds[i], i))

    for i in range(n):
        if preds[i] == 0:
            release(i, 0.0)
    done = 0
    while done < n:
        while free and ready:
            _, i = heapq.heappop(ready)
            free -= 1
            heapq.heappush(events, (clock + seconds[i], i))
        clock, i = heapq.heappop(events)
        done += 1
        if gpu[i]:
            free += 1
        for j in succ[i]:
            remaining[j] -= 1
            if remaining[j] == 0:
                release(j, clock)
    total = sum(s for s, g in zip(seconds, gpu) if g)
    return {"makespan": clock, "ideal": total / n_gpus, "critical_path": max(tail, default=0.0), "gpu_seconds": total}


def costed(jobs: list, cfg: dict) -> tuple[list[float], list[bool], list[str]]:
    from memprune.plan.config import Plan

    plan = Plan(cfg, ROOT)
    seconds, gpu, unmodelled = [], [], set()
    for rule, wildcards in jobs:
        s = job_seconds(rule, wildcards, cfg, plan)
        if s is None:
            unmodelled.add(rule)
        seconds.append(s or 0.0)
        gpu.append(bool(s))
    return seconds, gpu, sorted(unmodelled)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", nargs="+", default=["config/sd15.yaml"])
    ap.add_argument("--target", default=None, help="default: results/<name>/leaderboard.csv (every stage)")
    ap.add_argument("--gpus", type=int_list, default=[1, 8, 64])
    args = ap.parse_args()
    single = {"chunks": {"nemo": 100_000, "recovery": 100_000}}  # one job per prompt set / model
    for label, overlay in (("as configured", None), ("one job per set or model", single)):
        cfg = load_config(args.configfile, overlay)
        target = args.target or f"results/{cfg['model']['name']}/leaderboard.csv"
        jobs, edges = snakemake_dag(args.configfile, target, overlay)
        seconds, gpu, unmodelled = costed(jobs, cfg)
        largest = max(range(len(jobs)), key=lambda i: seconds[i])
        print(json.dumps({"dag": label, "jobs": len(jobs), "gpu_jobs": sum(gpu), "unmodelled": unmodelled,
                          "largest_job": [jobs[largest][0], round(seconds[largest] / 3600, 2)]}))
        for n in args.gpus:
            r = simulate(seconds, gpu, edges, n)
            print(json.dumps({"dag": label, "gpus": n, "makespan_h": round(r["makespan"] / 3600, 2),
                              "ideal_h": round(r["ideal"] / 3600, 2),
                              "critical_path_h": round(r["critical_path"] / 3600, 2),
                              "makespan_over_ideal": round(r["makespan"] / r["ideal"], 2),
                              "gpu_hours": round(r["gpu_seconds"] / 3600, 1)}))


if __name__ == "__main__":
    main()
