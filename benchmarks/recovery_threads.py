"""How the recovery attack's jobs should use 2 CPU cores: one job with 2 torch threads, or two jobs with 1 each.

Times the same recovery searches (DoRI's budget: 50 Adam steps, batch 8) of `--targets` photos on the testbed:
(a) one process with `torch.set_num_threads(2)`, (b) one process with 1 thread, (c) two 1-thread processes at
once, each doing the same searches. Prints searches per second of each, and the throughput ratio (c) / (a), in one
run (the machine is noisy: compare ratios, not seconds). One JSON line per measurement.

    python -m benchmarks.recovery_threads --model resources/testbed_planted --data results/testbed_planted/data \
        --prompts resources/prompts/testbed_planted/planted.txt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from memprune.bench import ROOT, cpu_pipeline, emit


def searches(model: str, data: str, prompts: str, targets: int, threads: int) -> float:
    """Seconds for `targets` searches in this process with `threads` torch threads (model loading apart)."""
    import torch

    from memprune.attacks import recovery
    from memprune.evaluate.training_images import TrainingImages
    from memprune.formats.prompts import read_prompts

    pipe = cpu_pipeline(model, threads)
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
    # this tool again, as a module from the repository root; paths made absolute for the child's directory
    child = [sys.executable, "-m", "benchmarks.recovery_threads", "--model", str(Path(args.model).resolve()),
             "--data", str(Path(args.data).resolve()), "--prompts", str(Path(args.prompts).resolve()),
             "--targets", str(args.targets), "--worker"]

    def worker(threads: int) -> subprocess.Popen:
        return subprocess.Popen(child + [str(threads)], stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def seconds_of(proc: subprocess.Popen) -> float:
        out = proc.communicate()[0]
        if proc.returncode:
            raise SystemExit(f"a worker failed (exit {proc.returncode})")
        return float(out.split()[-1])

    rates = {}
    for name, threads in (("one job, 2 threads", 2), ("one job, 1 thread", 1)):
        seconds = seconds_of(worker(threads))
        rates[name] = args.targets / seconds
        emit(setting=name, searches=args.targets, seconds=round(seconds, 2), searches_per_s=round(rates[name], 3))
    seconds = [seconds_of(p) for p in [worker(1) for _ in range(2)]]
    rates["two jobs, 1 thread each"] = 2 * args.targets / max(seconds)
    emit(setting="two jobs, 1 thread each", searches=2 * args.targets, seconds=[round(s, 2) for s in seconds],
         searches_per_s=round(rates["two jobs, 1 thread each"], 3))
    emit(throughput_two_1thread_over_one_2thread=round(rates["two jobs, 1 thread each"]
                                                       / rates["one job, 2 threads"], 3),
         one_2thread_over_one_1thread=round(rates["one job, 2 threads"] / rates["one job, 1 thread"], 3))


if __name__ == "__main__":
    main()
