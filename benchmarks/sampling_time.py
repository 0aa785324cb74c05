"""Sampling time of each compared variant relative to the unedited model: a pruned model, and the inference-time
mitigations (Wen et al., Ren et al., Jain et al.), their parameters from a config's `mitigation` block.

Every variant samples the same prompts and seeds in one process through the variant registry (as evaluation
does), interleaved round by round (the order rotates every round), so a noisy machine slows them alike; each is
warmed up at the batch it is timed at (`memprune.evaluate.timing`, which the leaderboard's timing rule runs on
every compared model). Prints each round's times and, per variant, the median over rounds of its time / the
unedited model's time in the same round.

    python -m benchmarks.sampling_time --checkpoint results/testbed/pruned/<params>/mem_k10/0 \
        [--model resources/testbed] [--variants none pruned wen ren jain] [--prompts 32] [--steps 50] [--rounds 5]
"""

import argparse
import statistics
import time

from memprune import variants as registry
from memprune.bench import default_config
from memprune.evaluate.timing import interleaved_times
from memprune.formats.prompts import read_prompts
from memprune.sampling import SamplingConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resources/testbed")
    ap.add_argument("--checkpoint", help="a pruned checkpoint directory (memprune prune: an edit checkpoint); "
                                         "needed by the variants that load one (pruned)")
    ap.add_argument("--variants", nargs="+", default=["none", "pruned", "wen", "ren", "jain"])
    ap.add_argument("--prompt-file", default="resources/prompts/testbed/duplicated.txt")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config", default="config.yaml",
                    help="the variants' parameters: its mitigation.<variant> blocks (schema defaults filled)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    names = list(dict.fromkeys(["none", *args.variants]))
    mitigation = default_config(args.config)["mitigation"]
    prompts = read_prompts(args.prompt_file)[: args.prompts]
    seeds = list(range(len(prompts)))
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=len(prompts))
    runs = {}
    for name in names:
        var = registry.get(name)
        if var.needs_checkpoint and not args.checkpoint:
            ap.error(f"variant {name} loads an edit checkpoint: give --checkpoint")
        pipe = var.load(args.model, args.checkpoint if var.needs_checkpoint else None, args.device, "auto", None)
        runs[name] = (var, pipe, {**var.default_params, **mitigation.get(name, {})})

    def run(name: str) -> float:
        var, pipe, params = runs[name]
        t = time.perf_counter()
        var.generate(pipe, prompts, seeds, cfg, params, False)
        return time.perf_counter() - t

    times = interleaved_times(run, names, args.rounds)  # one warm-up each, at the batch timed
    for r in range(args.rounds):
        print(f"round {r}: " + ", ".join(f"{n} {times[n][r]:.2f}s" for n in names), flush=True)
    print(f"model {args.model}, checkpoint {args.checkpoint}: {len(prompts)} prompts x {args.steps} steps, "
          f"guidance {args.guidance}, {args.rounds} rounds; parameters from {args.config}")
    for name in names[1:]:
        ratios = [t / n for t, n in zip(times[name], times["none"])]
        print(f"{name} / none: median {statistics.median(ratios):.3f} (rounds: {' '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()
