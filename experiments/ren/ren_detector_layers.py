"""Choosing `mitigation.ren.detect_layers` and `threshold` for a model: Ren et al.'s first-step detector, measured.

Ren et al. score an image by the entropy of its conditional cross-attention at the first denoising step (averaged
over heads, queries and the chosen layers; `memprune.mitigate.ren.first_step_entropy`), a higher score read as
memorized. This script prints, per layer choice (all, then each cross-attention layer in execution order), the
5th / 50th / 95th percentiles of the score of each prompt group (`--seeds` seeds per prompt, the first `--n`
prompts of each file), and the ROC AUC of each memorized group against the single-seen and held-out scene captions.

    python experiments/ren/ren_detector_layers.py [--model resources/testbed_planted] [--planted]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from memprune.bench import ROOT, cpu_pipeline, emit, int_list


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties one half."""
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "resources/testbed"))
    ap.add_argument("--planted", action="store_true", help="also the planted captions (a planted testbed)")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--n", type=int, default=50, help="prompts per group")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps (the first timestep depends on them)")
    args = ap.parse_args()

    from memprune.formats.prompts import read_prompts
    from memprune.mitigate.ren import cross_attention_layers, first_step_entropy
    from memprune.sampling import SamplingConfig, text_embeddings

    pipe = cpu_pipeline(args.model)
    files = {g: ROOT / f"resources/prompts/testbed/{f}.txt" for g, f in
             [("duplicated", "duplicated"), ("single", "single"), ("heldout", "heldout")]}
    if args.planted:
        files["planted"] = ROOT / "resources/prompts/testbed_planted/planted.txt"
    seeds = int_list(args.seeds)
    cfg = SamplingConfig(steps=args.steps, guidance=2.0, batch_size=64)
    n_layers = len(cross_attention_layers(pipe.unet))
    for layers in [None] + [[i] for i in range(n_layers)]:
        scores = {}
        for group, path in files.items():
            prompts = read_prompts(Path(path))[: args.n]
            flat_p, flat_s = [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]
            scores[group] = first_step_entropy(pipe, text_embeddings(pipe, flat_p), flat_s, cfg, layers)
        negatives = np.concatenate([scores["single"], scores["heldout"]])
        emit(layers="all" if layers is None else layers[0],
             **{f"{g}_p5_p50_p95": np.percentile(s, [5, 50, 95]).round(3).tolist() for g, s in scores.items()},
             **{f"auc_{g}": round(auc(scores[g], negatives), 3) for g in scores if g in ("duplicated", "planted")})


if __name__ == "__main__":
    main()
