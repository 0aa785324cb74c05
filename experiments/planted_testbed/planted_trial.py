"""Does the planted testbed memorize what was planted, keep what it had, and lose the planted copies when the
planted units are zeroed (the oracle edit)?

For a planted model (`memprune plant`) and its base, with the base's own sampling scheduler, DDIM-style
`--steps` steps at `--guidance` (as `weight_group_ablation.py`):
* planted copy rate: SSIM of each generation to its planted photo (`planted/<i>.png`), a prompt copies when
  SSIM >= threshold in most of `--seeds` (`metrics.copy_rate`); beside it, the share of planted prompts that
  copy a dataset photo instead (nearest of the duplicated and single-seen photos);
* duplicated copy rate: the same for the dataset's duplicated prompts and their own training photos;
* single-seen false copies: SSIM of the first `--max-single` single-seen prompts' generations to the nearest
  training or planted photo, the same majority rule;
* prompt following on the held-out scene prompts (`--pf-seeds`), all four attributes read back;
* the planted copy rate (and the others) after the oracle edit: `edits.apply(unet, oracle_masks(...))`.
One JSON line per (model, measurement).

    python experiments/planted_testbed/planted_trial.py --model /tmp/planted --data results/testbed/data \
        [--base resources/testbed]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from memprune.bench import ROOT, copies, cpu_pipeline, follows, int_list, sample, testbed_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a planted testbed (with planted.json)")
    ap.add_argument("--base", default=str(ROOT / "resources/testbed"), help="its base ('' to skip)")
    ap.add_argument("--data", default="results/testbed/data", help="the testbed dataset (ground truth)")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--pf-seeds", default="0,1", help="seeds of the held-out scene prompts")
    ap.add_argument("--max-single", type=int, default=100, help="single-seen prompts measured (0: none)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threshold", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from memprune.evaluate.metrics import copy_rate, ssim_matrix
    from memprune.formats.edits import apply
    from memprune.sampling import SamplingConfig
    from memprune.testbed.dataset import load_images
    from memprune.testbed.planted import oracle_masks, planted_images, read_planted_units

    data = Path(args.data)
    groups = testbed_groups(Path(args.model), data)
    truth = read_planted_units(Path(args.model))
    new_own = planted_images(Path(args.model), truth)
    dup, held = groups.duplicated, groups.heldout
    single = groups.single[: args.max_single]
    all_photos = np.concatenate([load_images(data, [r for r in groups.rows if r["group"] in ("duplicated", "single")]),
                                 new_own])
    seeds = int_list(args.seeds)
    pf_seeds = int_list(args.pf_seeds)
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=100)
    print(json.dumps({"model": args.model, "base": args.base, "planted_prompts": truth["k"],
                      "units": truth.get("units"),
                      "fraction": truth["fraction"], "duplicated": len(dup), "single": len(single),
                      "heldout_scenes": len(held), "seeds": seeds, "steps": args.steps, "guidance": args.guidance,
                      "plant_seconds": truth.get("seconds"), "plant_steps": truth.get("steps")}), flush=True)

    def report(label, measure, t0, **values):
        print(json.dumps({"model": label, "measure": measure, **values, "seconds": round(time.time() - t0, 1)}),
              flush=True)

    def measure_all(label, pipe, which):
        if "planted" in which:
            t0 = time.time()
            got = copies(pipe, truth["prompts"], new_own, seeds, cfg, args.threshold)
            # a planted prompt may instead copy a dataset photo (its words are those of trained captions)
            old = ssim_matrix(got.images, all_photos[: -len(new_own)]).reshape(len(new_own), len(seeds), -1).max(-1)
            report(label, "planted_copy_rate", t0, value=round(got.rate, 3), mean_ssim=round(got.mean_ssim, 3),
                   per_prompt_median=np.round(np.median(got.ssim, 1), 2).tolist(),
                   copies_a_dataset_photo=round(float(copy_rate(old, args.threshold)), 3))
        if "duplicated" in which:
            t0 = time.time()
            got = copies(pipe, [r["caption"] for r in dup], groups.duplicated_photos, seeds, cfg, args.threshold)
            report(label, "duplicated_copy_rate", t0, value=round(got.rate, 3), mean_ssim=round(got.mean_ssim, 3))
        if "single" in which and single:
            t0 = time.time()
            imgs = sample(pipe, [r["caption"] for r in single], seeds, cfg)
            nearest = ssim_matrix(imgs, all_photos).reshape(len(single), len(seeds), -1)
            is_new = nearest.argmax(-1) >= len(all_photos) - len(new_own)
            report(label, "single_false_copy_rate", t0,
                   value=round(float(copy_rate(nearest.max(-1), args.threshold)), 3),
                   nearest_is_planted_share=round(float(is_new.mean()), 3))
        if "heldout" in which:
            t0 = time.time()
            report(label, "prompt_following", t0, value=round(follows(pipe, held, pf_seeds, cfg), 3))

    everything = ("planted", "duplicated", "single", "heldout")
    if args.base:
        measure_all("base", cpu_pipeline(args.base, args.threads), everything)
    pipe = cpu_pipeline(args.model, args.threads)
    measure_all("planted", pipe, everything)
    zeroed = apply(pipe.unet, oracle_masks(truth, pipe.unet))
    print(json.dumps({"model": "planted+oracle", "zeroed_weights": int(sum(zeroed.values()))}), flush=True)
    measure_all("planted+oracle", pipe, everything)


if __name__ == "__main__":
    main()
