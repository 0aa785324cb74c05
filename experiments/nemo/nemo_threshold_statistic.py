"""NeMo's memorization threshold, two statistics: NeMo's README defines it as mean + 1 sd of ALL pairwise SSIMs
between the seeds' noise differences of the calibration prompts; memprune takes mean + 1 sd of each calibration
prompt's MAXIMUM pairwise SSIM (its memorization score). Prints both thresholds and, for every prompt file given,
the share of prompts whose score reaches each (the prompts NeMo calls memorized), as one JSON line.

    python experiments/nemo/nemo_threshold_statistic.py --model resources/testbed_planted \
        --calibration resources/prompts/testbed/single.txt \
        --prompts resources/prompts/testbed/duplicated.txt resources/prompts/testbed_planted/planted.txt \
        resources/prompts/testbed/generalization.txt
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calibration", required=True, help="non-memorized prompt file (the config's calibration set)")
    ap.add_argument("--prompts", nargs="+", required=True, help="prompt files whose flagged share is reported")
    ap.add_argument("--max-calibration", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()

    import torch

    from memprune.formats.prompts import read_prompts
    from memprune.localize import nemo
    from memprune.models import load_pipeline
    from memprune.sampling import text_embeddings

    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_pipeline(args.model, "cpu", "float32")
    layers = nemo.value_layers(pipe.unet)
    probe = nemo.Probe(pipe.unet, pipe.scheduler, layers, list(range(args.seeds)), 50, 1)

    def pairwise(prompts):
        """(P, S*(S-1)/2) every pairwise SSIM of each prompt's seeds."""
        s = args.seeds
        i, j = torch.triu_indices(s, s, 1)
        embeds = text_embeddings(pipe, prompts)
        return np.stack([nemo.ssim(*(lambda d: (d[i], d[j]))(probe.deltas(embeds[k : k + 1]))).numpy()
                         for k in range(len(prompts))])

    calibration = read_prompts(args.calibration)
    order = np.random.default_rng(0).permutation(len(calibration))[: args.max_calibration]
    cal = pairwise([calibration[k] for k in sorted(order)])
    thresholds = {"memprune_max_per_prompt": nemo.threshold_of(cal.max(1)),
                  "nemo_all_pairs": float(cal.mean() + cal.std(ddof=1))}
    out = {"model": args.model, "calibration": args.calibration, "calibration_prompts": len(cal), "seeds": args.seeds,
           "thresholds": {k: round(v, 4) for k, v in thresholds.items()}, "flagged": {}}
    for path in args.prompts:
        scores = pairwise(read_prompts(path)).max(1)
        out["flagged"][path] = {"prompts": len(scores), **{k: round(float((scores >= v).mean()), 3)
                                                            for k, v in thresholds.items()}}
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
