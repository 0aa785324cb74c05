"""How well each localizer finds the planted units of a planted testbed (`memprune plant`; its planted.json is the
answer): weight-level precision / recall and INJ's unit recall@k for k = r, 2r, 5r, per localizer at s = r and at
the paper's 1%, beside a random mask with the same counts per row. Activations of the planted prompts and the
null prompt are captured once (50 steps, guidance 2, seed 0, the conditional branch, as the workflow's default).
Prints one JSON line per setting.

    python benchmarks/planted_localization.py --model DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a planted testbed (with planted.json)")
    args = ap.parse_args()
    model = args.model

    from memprune.models import load_pipeline, ffn_layers
    from memprune.activations import capture
    from memprune.sampling import SamplingConfig
    from memprune import localize
    from memprune.localization import weight_precision_recall, recall_at, random_baseline
    from memprune.scores_packed import unpack
    truth = json.load(open(f"{model}/planted.json"))
    planted = {l: np.array(v) for l, v in truth["layers"].items()}
    t0 = time.time()
    pipe = load_pipeline(model, "cpu", "float32")
    cfg = SamplingConfig(steps=50, guidance=2.0, batch_size=32)
    cap = capture(pipe, truth["prompts"], 0, cfg)
    nul = capture(pipe, [""], 0, cfg)
    layers = [n for n, _ in ffn_layers(pipe.unet)]
    weights = {n: l.weight.detach().float() for n, l in ffn_layers(pipe.unet)}
    mem = {l: cap.sumsq[l][:, :, 1].sum(0).astype(np.float64) for l in layers}
    null = {l: nul.sumsq[l][:, :, 1].sum(0).astype(np.float64) for l in layers}
    print("capture s", round(time.time() - t0))
    r = truth["fraction"]
    pcts = [100 * r, 200 * r, 500 * r]
    infeat = {l: w.shape[1] for l, w in weights.items()}
    print(json.dumps({"random": random_baseline(planted, infeat, pcts)}))
    for name, params in (("wanda", {"sparsity": r, "tau": 10}), ("wanda", {"sparsity": 0.01, "tau": 10}),
                         ("activation", {"sparsity": r, "tau": 10}), ("activation", {"sparsity": 0.01, "tau": 10}),
                         ("magnitude", {"sparsity": r}), ("magnitude", {"sparsity": 0.01})):
        inputs = localize.Inputs(weights=weights, n_prompts=len(truth["prompts"]), memorized=mem, null=null,
                                 steps=np.arange(len(cap.timesteps)), t=cap.timesteps, rng=np.random.default_rng(0))
        ms = localize.get(name).locate(inputs, params)
        masks = {l: unpack(ms.union[l], ms.grid[l][1]) for l in ms.layers}
        p, rec = weight_precision_recall(masks, planted)
        ra = recall_at(masks, planted, pcts)
        ref = ms
        rnd = localize.get("random").locate(localize.Inputs(weights={}, reference=ref, rng=np.random.default_rng(1)), {"like": name, "seed": 1})
        rmasks = {l: unpack(rnd.union[l], rnd.grid[l][1]) for l in rnd.layers}
        rp, rr = weight_precision_recall(rmasks, planted)
        density = sum(m.sum() for m in masks.values()) / sum(m.size for m in masks.values())
        print(json.dumps({"method": name, **params, "density": round(float(density), 4), "precision": round(p, 3), "recall": round(rec, 3),
                          **{f"recall@{k:g}%": round(v, 3) for k, v in ra.items()},
                          "random_same_counts": {"precision": round(rp, 3), "recall": round(rr, 3)}}))

if __name__ == "__main__":
    main()
