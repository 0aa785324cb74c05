"""How well each localizer finds the planted units of a planted testbed (`memprune plant`; its planted.json is the
answer), and what pruning with its mask does to the copies.

Masks come from one subset of `--subset-size` planted prompts (seeded draw), as the workflow's collections: the
activations of those prompts and of the null prompt are captured once (50 steps, guidance 2, seed 0, the
conditional branch, as the workflow's default). Per localizer (wanda, activation, magnitude) at s = r and at the
paper's 1%: weight-level precision / recall and INJ's unit recall@k for k = r, 2r, 5r, beside a random mask with
the same counts per row (and the random baseline). Then the edits: the model pruned with each Wanda mask, and the
oracle edit (the planted units zeroed), against the unedited model: copy rate of the planted prompts outside the
subset and of the 50 duplicated prompts (SSIM >= 0.4 to the own photo in most of `--seeds`, DDIM `--steps`,
guidance 2), prompt following on the held-out scenes (2 seeds). One JSON line per setting.

    python experiments/planted_testbed/planted_localization.py --model resources/testbed_planted \
        --data results/testbed_planted/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from memprune.bench import copies, cpu_pipeline, emit, follows, int_list, testbed_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a planted testbed (with planted.json)")
    ap.add_argument("--data", required=True, help="its extended dataset (memprune extend-data)")
    ap.add_argument("--subset-size", type=int, default=10)
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from memprune import localize
    from memprune.capture.hooks import capture
    from memprune.formats.edits import apply
    from memprune.localize.known_answer import random_baseline, recall_at, weight_precision_recall
    from memprune.localize.wanda_packed import unpack
    from memprune.models import ffn_layers
    from memprune.sampling import SamplingConfig
    from memprune.testbed.planted import oracle_masks, planted_images, read_planted_units

    model, data = Path(args.model), Path(args.data)
    truth = read_planted_units(model)
    groups = testbed_groups(model, data)
    planted = {l: np.array(v) for l, v in truth["layers"].items()}
    rng = np.random.default_rng(args.subset_seed)
    subset = sorted(rng.choice(truth["k"], size=args.subset_size, replace=False).tolist())
    held_planted = [i for i in range(truth["k"]) if i not in subset]
    t0 = time.time()
    pipe = cpu_pipeline(model, args.threads)
    cfg = SamplingConfig(steps=50, guidance=2.0, batch_size=32)
    cap = capture(pipe, [truth["prompts"][i] for i in subset], 0, cfg)
    nul = capture(pipe, [""], 0, cfg)
    layers = [n for n, _ in ffn_layers(pipe.unet)]
    weights = {n: l.weight.detach().float().clone() for n, l in ffn_layers(pipe.unet)}
    mem = {l: cap.sumsq[l][:, :, 1].sum(0).astype(np.float64) for l in layers}
    null = {l: nul.sumsq[l][:, :, 1].sum(0).astype(np.float64) for l in layers}
    r = truth["fraction"]
    pcts = [100 * r, 200 * r, 500 * r]
    print(json.dumps({"model": str(model), "fraction": r, "planted_units": truth["units"], "k": truth["k"],
                      "subset": subset, "capture_seconds": round(time.time() - t0, 1),
                      "random": random_baseline(planted, {l: w.shape[1] for l, w in weights.items()}, pcts)}),
          flush=True)

    wanda_masks = {}
    for name in ("wanda", "activation", "magnitude"):
        for sparsity in (r, 0.01):
            params = {"sparsity": sparsity} if name == "magnitude" else {"sparsity": sparsity, "tau": 10}
            inputs = localize.Inputs(weights=weights, n_prompts=len(subset), memorized=mem, null=null,
                                     steps=np.arange(len(cap.timesteps)), t=cap.timesteps, rng=np.random.default_rng(0))
            ms = localize.get(name).locate(inputs, params)
            masks = {l: unpack(ms.union[l], ms.grid[l][1]) for l in ms.layers}
            if name == "wanda":
                wanda_masks[sparsity] = ms
            p, rec = weight_precision_recall(masks, planted)
            ra = recall_at(masks, planted, pcts)
            rnd = localize.get("random").locate(localize.Inputs(weights={}, reference=ms, rng=np.random.default_rng(1)),
                                                {"like": name, "seed": 1})
            rp, rr = weight_precision_recall({l: unpack(rnd.union[l], rnd.grid[l][1]) for l in rnd.layers}, planted)
            density = sum(m.sum() for m in masks.values()) / sum(m.size for m in masks.values())
            print(json.dumps({"method": name, **params, "density": round(float(density), 4), "precision": round(p, 3),
                              "recall": round(rec, 3), **{f"recall@{k:g}%": round(v, 3) for k, v in ra.items()},
                              "random_same_counts": {"precision": round(rp, 3), "recall": round(rr, 3)}}), flush=True)

    seeds = int_list(args.seeds)
    own_planted = planted_images(model, truth)
    gen_cfg = SamplingConfig(steps=args.steps, guidance=2.0, batch_size=100)

    def measure(label, extra):
        t1 = time.time()
        pr = copies(pipe, [truth["prompts"][i] for i in held_planted], own_planted[held_planted], seeds, gen_cfg, 0.4)
        dr = copies(pipe, [r_["caption"] for r_ in groups.duplicated], groups.duplicated_photos, seeds, gen_cfg, 0.4)
        pf = follows(pipe, groups.heldout, [0, 1], gen_cfg)
        emit(edit=label, **extra, planted_heldout_copy_rate=round(pr.rate, 3), duplicated_copy_rate=round(dr.rate, 3),
             prompt_following=round(pf, 3), seconds=round(time.time() - t1, 1))

    original = {n: p.detach().clone() for n, p in pipe.unet.state_dict().items()}

    def restore():
        pipe.unet.load_state_dict(original)

    measure("none", {})
    for sparsity, ms in wanda_masks.items():
        zeroed = apply(pipe.unet, ms.layer_masks())
        measure("wanda", {"sparsity": sparsity, "zeroed": int(sum(zeroed.values()))})
        restore()
    zeroed = apply(pipe.unet, oracle_masks(truth, pipe.unet))
    measure("oracle", {"zeroed": int(sum(zeroed.values()))})
    restore()


if __name__ == "__main__":
    main()
