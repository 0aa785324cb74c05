"""Choosing `mitigation.wen.target_loss` for a model: Wen et al.'s early-stop loss, measured.

Wen et al. stop optimising a prompt's embedding once its first-step loss ||f(x_T, c) - f(x_T, null)|| falls
below a target, which they set from the loss of non-memorized prompts. This script prints, for the model:
* the first-step loss (before any optimisation) of the memorized prompts and of the non-memorized prompts
  (`--seeds` seeds each): 5th / 50th / 95th percentiles;
* for each target in `--targets` ("none": never stop early), the copy rate of the memorized prompts after the
  mitigation (SSIM >= threshold to the own training photo; ground truth: the testbed dataset), with the mean
  number of AdamW steps taken.

    python benchmarks/wen_target_loss.py [--targets none,0.9,1.5] [--seeds 0,1,2,3] [--copy-seeds 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))


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

    import yaml

    from memprune.evaluate.metrics import copy_rate
    from memprune.models import load_pipeline
    from memprune.formats.prompts import read_prompts
    from memprune.sampling import SamplingConfig, generate
    from memprune.mitigate.wen import wen_mitigated_embeddings
    from memprune.testbed.dataset import load_images, read_checked_manifest
    from memprune.testbed.report import own_photo_ssim

    wen = yaml.safe_load((ROOT / "config.yaml").read_text())["mitigation"]["wen"]
    data = Path(args.data)
    dup = [r for r in read_checked_manifest(Path(args.model), data) if r["group"] == "duplicated"]
    own = load_images(data, dup)
    mem = [r["caption"] for r in dup]
    non = read_prompts(Path(args.nonmemorized))
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=64)
    pipe = load_pipeline(args.model, "cpu", "float32")

    def first_loss(prompts: list[str]) -> np.ndarray:
        flat = [p for p in prompts for _ in seeds]
        _, info = wen_mitigated_embeddings(pipe, flat, [s for _ in prompts for s in seeds], cfg, lr=wen["lr"],
                                           max_iters=0, target_loss=None)
        return info["initial_loss"]

    t0 = time.time()
    for name, prompts in (("memorized", mem), ("nonmemorized", non)):
        loss = first_loss(prompts)
        print(json.dumps({"first_step_loss": name, "prompts": len(prompts), "seeds": seeds,
                          "p5_p50_p95": [round(float(q), 3) for q in np.percentile(loss, [5, 50, 95])],
                          "seconds": round(time.time() - t0)}), flush=True)

    copy_seeds = [int(s) for s in args.copy_seeds.split(",")]
    flat_p = [p for p in mem for _ in copy_seeds]
    flat_s = [s for _ in mem for s in copy_seeds]
    for target in args.targets.split(","):
        t0 = time.time()
        tl = None if target == "none" else float(target)
        embeds, info = wen_mitigated_embeddings(pipe, flat_p, flat_s, cfg, lr=wen["lr"], max_iters=wen["max_iters"],
                                                target_loss=tl)
        imgs = generate(pipe, flat_p, flat_s, cfg, prompt_embeds=embeds)
        sims = own_photo_ssim(imgs, own)
        print(json.dumps({"target_loss": target, "copy_rate": round(float(copy_rate(sims, args.threshold)), 3),
                          "mean_ssim": round(float(sims.mean()), 3),
                          "mean_adamw_steps": round(float(info["iterations"].mean()), 2),
                          "seconds": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
