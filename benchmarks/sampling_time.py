"""Sampling time of a pruned model and of Wen et al.'s mitigation, relative to the unedited model.

All three variants sample the same prompts and seeds in one process, interleaved round by round (the order
rotates every round), so a noisy machine slows them alike. Prints each round's times and, per variant, the
median over rounds of its time / the unedited model's time in the same round (issue 4's bar: pruned <= 1.05).

    python -m benchmarks.sampling_time --checkpoint results/testbed/pruned/<params>/mem_k10/0 \
        [--model resources/testbed] [--prompts 32] [--steps 50] [--rounds 5]
"""

import argparse
import statistics
import time

from memprune.bench import default_config
from memprune.models import load_pipeline
from memprune.formats.prompts import read_prompts
from memprune.formats.edits import load_edited_pipeline
from memprune.sampling import SamplingConfig, generate
from memprune.mitigate.wen import wen_mitigated_embeddings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resources/testbed")
    ap.add_argument("--checkpoint", required=True, help="a pruned checkpoint directory (memprune prune: an edit checkpoint)")
    ap.add_argument("--prompt-file", default="resources/prompts/testbed/duplicated.txt")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config", default="config.yaml", help="Wen et al.'s parameters: mitigation.wen (schema defaults filled)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    wen = default_config(args.config)["mitigation"]["wen"]
    prompts = read_prompts(args.prompt_file)[: args.prompts]
    seeds = list(range(len(prompts)))
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=len(prompts))
    pipes = {"none": load_pipeline(args.model, args.device, "auto"),
             "pruned": load_edited_pipeline(args.checkpoint, base=args.model, device=args.device)}

    def run(variant: str) -> float:
        t = time.perf_counter()
        if variant == "wen":
            pipe = pipes["none"]
            embeds, _ = wen_mitigated_embeddings(pipe, prompts, seeds, cfg, lr=wen["lr"], max_iters=wen["max_iters"],
                                                 target_loss=wen["target_loss"])
            generate(pipe, prompts, seeds, cfg, prompt_embeds=embeds)
        else:
            generate(pipes[variant], prompts, seeds, cfg)
        return time.perf_counter() - t

    variants = ["none", "pruned", "wen"]
    for v in variants:  # warm-up
        run(v)
    times = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % 3:] + variants[: r % 3]
        for v in order:
            times[v].append(run(v))
        print(f"round {r}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants), flush=True)
    print(f"model {args.model}, checkpoint {args.checkpoint}: {len(prompts)} prompts x {args.steps} steps, "
          f"guidance {args.guidance}, {args.rounds} rounds")
    for v in ("pruned", "wen"):
        ratios = [t / n for t, n in zip(times[v], times["none"])]
        print(f"{v} / none: median {statistics.median(ratios):.3f} (rounds: {' '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()
