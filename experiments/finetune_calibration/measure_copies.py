"""How many of the fine-tuned photos does a finetune testbed copy, per number of passes over its data?

`memprune finetune-testbed --snapshot E=DIR ...` saves the model after E epochs of one longer run (bit-identical to
a run of E epochs: tests/test_planted.py). For each model given here, with the base's sampling scheduler, DDIM-style
`--steps` steps at `--guidance`:
* fine-tuned photos: SSIM of each generation to the prompt's own photo; a prompt copies when SSIM >= threshold in
  most of `--seeds` (`metrics.copy_rate`), with the count of prompts copied;
* the same prompts copying a photo of the dataset they were not written for (nearest duplicated, single-seen or
  other fine-tuned photo, the majority rule): the "another training image" of the extraction attack;
* the shipped duplicated photos' copy rate, and prompt following on the held-out scene prompts (`--pf-seeds`).
One JSON line per (model, measurement).

    python experiments/finetune_calibration/measure_copies.py --data results/testbed_finetune/data \
        results/ftcal/e8 results/ftcal/e16 ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from memprune.bench import copies, cpu_pipeline, follows, int_list, testbed_groups


def measure_finetuned(model, pipe, ft, photos, own_index, seeds, cfg, threshold) -> None:
    """The fine-tuned prompts' copies of their own photo, and of another photo of the dataset (one JSON line)."""
    from memprune.evaluate.metrics import copied_in_most_seeds, copy_rate, ssim_matrix

    t0 = time.time()
    got = copies(pipe, [r["caption"] for r in ft], photos[own_index], seeds, cfg, threshold)
    sim = ssim_matrix(got.images, photos).reshape(len(ft), len(seeds), -1)
    nearest = sim.argmax(-1)
    other = np.where(nearest != own_index[:, None], sim.max(-1), 0.0)  # SSIM to a photo that is not its own
    per_prompt = copied_in_most_seeds(got.ssim, threshold)
    print(json.dumps({"model": model, "measure": "finetuned_copy_rate", "value": round(got.rate, 3),
                      "copied": int(np.sum(per_prompt)), "mean_ssim": round(got.mean_ssim, 3),
                      "copies_another_photo": round(float(copy_rate(other, threshold)), 3),
                      "seconds": round(time.time() - t0, 1)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="finetune testbeds (memprune finetune-testbed outputs)")
    ap.add_argument("--data", default="results/testbed_finetune/data", help="their extended dataset (ground truth)")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--pf-seeds", default="0,1", help="seeds of the held-out scene prompts")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threshold", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma-separated measurements to skip: finetuned, duplicated, heldout")
    args = ap.parse_args()

    from memprune.sampling import SamplingConfig
    from memprune.testbed.dataset import load_images

    data, seeds, skip = Path(args.data), int_list(args.seeds), set(args.skip.split(","))
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=100)
    for model in args.models:
        record = json.loads((Path(model) / "memprune_train.json").read_text())
        groups = testbed_groups(Path(model), data)
        ft = [r for r in groups.rows if r["group"] == "finetuned"]
        photos_rows = [r for r in groups.rows if r["group"] in ("duplicated", "single", "finetuned")]
        photos = load_images(data, photos_rows)
        own_index = np.array([photos_rows.index(r) for r in ft])
        print(json.dumps({"model": model, "epochs": record["spec"]["epochs"], "steps": record["steps"],
                          "exposures_per_photo": round(record["spec"]["epochs"] * record["added"]["duplication"]),
                          "final_loss": record["loss"][-1], "finetuned": len(ft), "seeds": seeds}), flush=True)
        pipe = cpu_pipeline(model, args.threads)
        if "finetuned" not in skip:
            measure_finetuned(model, pipe, ft, photos, own_index, seeds, cfg, args.threshold)
        if "duplicated" not in skip:
            t0 = time.time()
            dup = copies(pipe, [r["caption"] for r in groups.duplicated], groups.duplicated_photos, seeds, cfg,
                         args.threshold)
            print(json.dumps({"model": model, "measure": "duplicated_copy_rate", "value": round(dup.rate, 3),
                              "seconds": round(time.time() - t0, 1)}), flush=True)
        if "heldout" not in skip:
            t0 = time.time()
            pf = follows(pipe, groups.heldout, int_list(args.pf_seeds), cfg)
            print(json.dumps({"model": model, "measure": "prompt_following", "value": round(pf, 3),
                              "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
