"""How the recovery attack's jobs should use 2 CPU cores: one job with 2 torch threads, or two jobs with 1 each.

Times the same recovery searches (DoRI's budget: 50 Adam steps, batch 8) of `--targets` photos on the testbed:
(a) one process with `torch.set_num_threads(2)`, (b) one process with 1 thread, (c) two 1-thread processes at
once, each doing the same searches. Prints searches per second of each, and the throughput ratio (c) / (a), in one
run (the machine is noisy: compare ratios, not seconds). One JSON line per measurement.

    python benchmarks/recovery_threads.py --model resources/testbed_planted --data results/testbed_planted/data \
        --prompts resources/prompts/testbed_planted/planted.txt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))


def searches(model: str, data: str, prompts: str, targets: int, threads: int) -> float:
    """Seconds for `targets` searches in this process with `threads` torch threads (model loading apart)."""
    import torch

    from memprune.attacks import recovery
    from memprune.evaluate.training_images import TrainingImages
    from memprune.models import load_pipeline
    from memprune.formats.prompts import read_prompts

    torch.set_num_threads(threads)
    pipe = load_pipeline(model, "cpu", "float32")
    pipe.unet.requires_grad_(False)
    truth = TrainingImages(data=data)
    spec = recovery.RecoverySpec()
    gen = torch.Generator().manual_seed(0)
    work = []
    for prompt in read_prompts(Path(prompts))[:targets]:
        image = truth.first_image(prompt)
        if image is None:
            raise SystemExit(f"{data}: no training photo for {prompt!r}")
        work.append((recovery.image_latent(pipe, image), recovery.embed(pipe, [prompt])))
    start = time.perf_counter()
    with torch.enable_grad():
        for z0, emb in work:
            recovery.search(pipe.unet, pipe.scheduler, z0, emb, spec, gen)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the testbed dataset (the photos)")
    ap.add_argument("--prompts", required=True, help="prompt file whose first --targets photos are searched")
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # threads, in a child process
    args = ap.parse_args()
    common = [args.model, args.data, args.prompts, args.targets]
    if args.worker:
        print(searches(*common, threads=args.worker))
        return
    child = [sys.executable, __file__, "--model", args.model, "--data", args.data, "--prompts", args.prompts,
             "--targets", str(args.targets), "--worker"]
    rates = {}
    for name, threads in (("one job, 2 threads", 2), ("one job, 1 thread", 1)):
        seconds = float(subprocess.run(child + [str(threads)], capture_output=True, text=True, check=True).stdout.split()[-1])
        rates[name] = args.targets / seconds
        print(json.dumps({"setting": name, "searches": args.targets, "seconds": round(seconds, 2),
                          "searches_per_s": round(rates[name], 3)}), flush=True)
    procs = [subprocess.Popen(child + ["1"], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    seconds = [float(p.communicate()[0].split()[-1]) for p in procs]
    rates["two jobs, 1 thread each"] = 2 * args.targets / max(seconds)
    print(json.dumps({"setting": "two jobs, 1 thread each", "searches": 2 * args.targets,
                      "seconds": [round(s, 2) for s in seconds], "searches_per_s": round(rates["two jobs, 1 thread each"], 3)}))
    print(json.dumps({"throughput_two_1thread_over_one_2thread": round(rates["two jobs, 1 thread each"] / rates["one job, 2 threads"], 3),
                      "one_2thread_over_one_1thread": round(rates["one job, 2 threads"] / rates["one job, 1 thread"], 3)}))


if __name__ == "__main__":
    main()
