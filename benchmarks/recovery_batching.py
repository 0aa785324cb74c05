"""What `recovery.searches_per_call` buys: one recovery job's work (attacks/recovery.py: `--targets` photos, each
searched from the prompt and from a random start at DoRI's budget, 50 Adam steps of batch 8, then generated with
4 seeds from the start and the found embedding) with the searches one per UNet call and `--per-call` per call,
in one process and one thread, rounds interleaved after a warm-up of each at the same batch. Prints seconds per
round and the ratio of the medians (the machine is noisy: compare the ratio, not the seconds), and how far the
batched embeddings are from the one-at-a-time ones (rounding only: the draws are the same). One JSON line per
measurement.

    python -m benchmarks.recovery_batching --model resources/testbed_planted --targets 8 --per-call 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from memprune.bench import ROOT, cpu_pipeline, emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "resources" / "testbed_planted"))
    p.add_argument("--targets", type=int, default=8, help="photos per job (the configs' chunks.recovery)")
    p.add_argument("--per-call", type=int, default=16, help="searches per UNet call (2 starts per photo)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    from memprune.attacks import recovery
    from memprune.variants import get

    pipe = cpu_pipeline(args.model, 1)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    rng = np.random.default_rng(0)
    prompts = [f"a photo of thing {i}" for i in range(args.targets)]
    targets = [{"prompt": q, "group": "g", "image": (rng.random((size, size, 3)) * 255).astype(np.uint8),
                "unrelated": prompts[0]} for q in prompts]
    inits, spec = ["prompt", "random"], recovery.RecoverySpec(steps=args.steps)

    def job(per_call: int, n: int = args.targets) -> tuple[float, dict]:
        t0 = time.perf_counter()
        res = recovery.attack_targets(pipe, get("none"), {}, targets[:n], inits, spec, prompts, per_call=per_call)
        return time.perf_counter() - t0, res

    for per_call in (1, args.per_call):  # warm-up: a whole call at the batch each setting times
        job(per_call, max(1, min(args.targets, per_call // len(inits))))
    seconds: dict[int, list[float]] = {1: [], args.per_call: []}
    found = {}
    for r in range(args.rounds):
        for per_call in (1, args.per_call):
            s, found[per_call] = job(per_call)
            seconds[per_call].append(s)
            emit(round=r, searches_per_call=per_call, seconds=round(s, 2),
                 search_seconds=round(float(np.nansum(found[per_call]["seconds"])), 2))
    one, many = found[1], found[args.per_call]
    emit(searches=args.targets * len(inits), per_call=args.per_call,
         speedup=round(float(np.median(seconds[1]) / np.median(seconds[args.per_call])), 2),
         search_speedup=round(float(np.nansum(one["seconds"]) / np.nansum(many["seconds"])), 2),
         embedding_max_abs_difference=float(np.abs(many["embedding"] - one["embedding"]).max()),
         embedding_max_abs_moved=float(np.abs(one["embedding"][:, :, 1] - one["embedding"][:, :, 0]).max()),
         same_copy_decisions=bool((recovery.copied(many["after"], spec.copy_threshold)
                                   == recovery.copied(one["after"], spec.copy_threshold)).all()))


if __name__ == "__main__":
    main()
