"""Choosing `mitigation.wen.target_loss` for a model: Wen et al.'s early-stop loss, measured.

Wen et al. stop optimising a prompt's embedding once its first-step loss ||f(x_T, c) - f(x_T, null)|| falls
below a target, which they set from the loss of non-memorized prompts. This script prints, for the model:
* the first-step loss (before any optimisation) of the memorized prompts and of the non-memorized prompts
  (`--seeds` seeds each): 5th / 50th / 95th percentiles;
* for each target in `--targets` ("none": never stop early), the copy rate of the memorized prompts after the
  mitigation (SSIM >= threshold to the own training photo; ground truth: the testbed dataset), with the mean
  number of AdamW steps taken.

    python experiments/wen/wen_target_loss.py [--targets none,0.9,1.5] [--seeds 0,1,2,3] [--copy-seeds 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from memprune.bench import ROOT, copies, cpu_pipeline, default_config, emit, int_list, prompt_major, testbed_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "resources/testbed"))
    ap.add_argument("--data", default="results/testbed/data", help="the testbed dataset (ground truth)")
    ap.add_argument("--nonmemorized", default=str(ROOT / "resources/prompts/testbed/generalization.txt"))
    ap.add_argument("--seeds", default="0,1,2,3", help="seeds of the loss distributions")
    ap.add_argument("--copy-seeds", default="0", help="seeds of the copy rate under mitigation")
    ap.add_argument("--targets", default="none,0.9,1.5")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threshold", type=float, default=0.4)
    args = ap.parse_args()

    from memprune.formats.prompts import read_prompts
    from memprune.mitigate.wen import wen_mitigated_embeddings
    from memprune.sampling import SamplingConfig

    wen = default_config()["mitigation"]["wen"]
    groups = testbed_groups(args.model, args.data)
    own = groups.duplicated_photos
    mem = [r["caption"] for r in groups.duplicated]
    non = read_prompts(Path(args.nonmemorized))
    seeds = int_list(args.seeds)
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=64)
    pipe = cpu_pipeline(args.model)

    def first_loss(prompts: list[str]) -> np.ndarray:
        _, info = wen_mitigated_embeddings(pipe, *prompt_major(prompts, seeds), cfg, lr=wen["lr"], max_iters=0,
                                           target_loss=None)
        return info["initial_loss"]

    t0 = time.time()
    for name, prompts in (("memorized", mem), ("nonmemorized", non)):
        loss = first_loss(prompts)
        emit(first_step_loss=name, prompts=len(prompts), seeds=seeds,
             p5_p50_p95=[round(float(q), 3) for q in np.percentile(loss, [5, 50, 95])], seconds=round(time.time() - t0))

    copy_seeds = int_list(args.copy_seeds)
    flat_p, flat_s = prompt_major(mem, copy_seeds)
    for target in args.targets.split(","):
        t0 = time.time()
        tl = None if target == "none" else float(target)
        embeds, info = wen_mitigated_embeddings(pipe, flat_p, flat_s, cfg, lr=wen["lr"], max_iters=wen["max_iters"],
                                                target_loss=tl)
        copied = copies(pipe, mem, own, copy_seeds, cfg, args.threshold, prompt_embeds=embeds)
        emit(target_loss=target, **copied.summary(), mean_adamw_steps=round(float(info["iterations"].mean()), 2),
             seconds=round(time.time() - t0))


if __name__ == "__main__":
    main()
