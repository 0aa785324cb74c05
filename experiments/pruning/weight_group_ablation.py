"""Where does a model keep its copies? Zero whole groups of UNet weights and measure what is left.

The method prunes a subset of the ff.net.2 weights. Zeroing *every* ff.net.2 weight is therefore the largest
edit any of its masks can make, whatever the sparsity, tau or prompt subset: copies that survive it are not held
by the ff.net.2 weights alone. Other groups (cross-attention values / outputs, self-attention outputs) are
zeroed for comparison. Biases are left alone, as pruning leaves them.

For each setting, on the testbed (ground truth: the dataset manifest):
* copy rate of the duplicated prompts (SSIM >= threshold to the own training photo in most of `--seeds`);
* prompt following on the held-out scene prompts (all four attributes read back);
* for the settings in `--attack`, the extraction attack (Carlini et al.) on the duplicated prompts:
  `--attack-samples` seeds per prompt, tiled distance / clique as configured in config.yaml's `attack`.

    python experiments/pruning/weight_group_ablation.py [--seeds 0,1,2,3] [--attack none,ffn2_all] [--attack-samples 50]
"""

from __future__ import annotations

import argparse
import sys
import time

from memprune.bench import ROOT, copies, cpu_pipeline, default_config, emit, follows, int_list, testbed_groups

# setting -> predicate on a UNet parameter name (True: zero it)
GROUPS = {
    "none": lambda n: False,
    "ffn2_all": lambda n: n.endswith("ff.net.2.weight"),
    "ffn2_down": lambda n: n.endswith("ff.net.2.weight") and n.startswith("down_blocks"),
    "ffn2_mid": lambda n: n.endswith("ff.net.2.weight") and n.startswith("mid_block"),
    "ffn2_up": lambda n: n.endswith("ff.net.2.weight") and n.startswith("up_blocks"),
    "ffn_all": lambda n: ".ff.net." in n and n.endswith(".weight"),
    "attn2_to_v": lambda n: n.endswith("attn2.to_v.weight"),
    "attn1_to_out": lambda n: n.endswith("attn1.to_out.0.weight"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "resources/testbed"))
    ap.add_argument("--data", default="results/testbed/data", help="the testbed dataset (ground truth)")
    ap.add_argument("--settings", default=",".join(GROUPS), help=f"of {', '.join(GROUPS)}")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--pf-seeds", default="0,1", help="seeds of the held-out scene prompts")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threshold", type=float, default=0.4)
    ap.add_argument("--attack", default="none,ffn2_all", help="settings attacked ('' for none)")
    ap.add_argument("--attack-samples", type=int, default=50)
    args = ap.parse_args()

    import torch

    from memprune.attacks.extraction import generate_candidates, identify
    from memprune.sampling import SamplingConfig

    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings + [a for a in args.attack.split(",") if a] if s not in GROUPS]
    if unknown:
        sys.exit(f"unknown setting(s) {unknown}; known: {list(GROUPS)}")
    attack_cfg = default_config()["attack"]
    groups = testbed_groups(args.model, args.data)
    dup, held, own = groups.duplicated, groups.heldout, groups.duplicated_photos
    seeds = int_list(args.seeds)
    pf_seeds = int_list(args.pf_seeds)
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=100)
    pipe = cpu_pipeline(args.model)
    params = dict(pipe.unet.named_parameters())
    original = {n: p.detach().clone() for n, p in params.items()}
    emit(model=args.model, duplicated=len(dup), heldout_scenes=len(held), seeds=seeds, steps=args.steps,
         guidance=args.guidance)

    for setting in settings:
        t0 = time.time()
        zero = GROUPS[setting]
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(original[n])
                if zero(n):
                    p.zero_()
        n_zero = sum(original[n].numel() for n in params if zero(n))
        copied = copies(pipe, [r["caption"] for r in dup], own, seeds, cfg, args.threshold)
        line = {"setting": setting, "zeroed_weights": n_zero,
                "zeroed_share_of_unet": round(n_zero / sum(p.numel() for p in original.values()), 4),
                **copied.summary(), "prompt_following": round(follows(pipe, held, pf_seeds, cfg), 3)}
        if setting in args.attack.split(","):
            acfg = SamplingConfig(steps=attack_cfg["steps"], guidance=attack_cfg["guidance"],
                                  batch_size=attack_cfg["batch_size"])
            got = generate_candidates(pipe, [r["caption"] for r in dup], list(range(args.attack_samples)), acfg,
                                      attack_cfg["tile_grid"], references=[own[i : i + 1] for i in range(len(dup))])
            res = identify(got["distance"], got["ssim_truth"], attack_cfg["distance_threshold"],
                           attack_cfg["min_clique"], attack_cfg["copy_threshold"])
            line["attack_identified"] = f"{int(res['identified'].sum())}/{len(dup)}"
            line["attack_actually_memorized"] = f"{int(res['actually_memorized'].sum())}/{len(dup)}"
        line["seconds"] = round(time.time() - t0)
        emit(**line)


if __name__ == "__main__":
    main()
