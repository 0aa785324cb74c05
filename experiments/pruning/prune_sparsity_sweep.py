"""Which sparsity (and which layers) does pruning need on a model? A sweep around the paper's setting.

For one subset's activations (default: the testbed's `mem_k10` subset 0), masks are computed at several
sparsities (tau fixed), the union masks zero the ff.net.2 weights (all layers, or only the down / mid / up
blocks), and the pruned model samples:
* the memorized prompts NOT in the subset (copy rate: SSIM >= threshold to the own training image in most seeds),
* the held-out scene prompts (prompt following: all four attributes read back).
Prints one line per setting, with the density of the pruned weights; the unedited model comes first.

    python experiments/pruning/prune_sparsity_sweep.py [--sparsities 0.01,0.05,0.1,0.2] [--seeds 0,1] [--steps 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from memprune.bench import ROOT, copies, cpu_pipeline, emit, follows, int_list, testbed_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "resources/testbed"))
    ap.add_argument("--data", default="results/testbed/data", help="the testbed dataset (ground truth)")
    ap.add_argument("--activations", default="results/testbed/activations/seed0_steps50_g2.0_paper")
    ap.add_argument("--collection", default="mem_k10")
    ap.add_argument("--subset", type=int, default=0)
    ap.add_argument("--sparsities", default="0.01,0.05,0.1,0.2")
    ap.add_argument("--layer-groups", default="all,down,mid,up", help="which blocks to prune at the largest sparsity")
    ap.add_argument("--tau", type=int, default=10)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threshold", type=float, default=0.4)
    args = ap.parse_args()

    import torch

    from memprune.formats.edits import LayerMask, apply
    from memprune.formats.masks import read_mask_set
    from memprune.formats.store import open_zarr
    from memprune.localize.run import locate_collection
    from memprune.models import ffn_layers
    from memprune.sampling import SamplingConfig

    act_dir = Path(args.activations)
    subset_store = act_dir / "subsets" / args.collection / f"{args.subset}.zarr"
    subset_prompts = set(map(str, open_zarr(subset_store, load=False)["prompt"].values))
    groups = testbed_groups(args.model, args.data)
    outside = [i for i, r in enumerate(groups.duplicated) if r["caption"] not in subset_prompts]
    dup = [groups.duplicated[i] for i in outside]
    own = groups.duplicated_photos[outside]
    seeds = int_list(args.seeds)
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=64)
    pipe = cpu_pipeline(args.model)
    layers = ffn_layers(pipe.unet)
    original = {name: lin.weight.detach().clone() for name, lin in layers}

    def evaluate(label: str, masks: dict[str, LayerMask] | None) -> None:
        t0 = time.time()
        with torch.no_grad():
            for name, lin in layers:
                lin.weight.copy_(original[name])
        n_zero = sum(apply(pipe.unet, masks or {}).values())  # the common edit path, as the pruned checkpoints
        n_all = sum(w.numel() for w in original.values())
        copied = copies(pipe, [r["caption"] for r in dup], own, seeds, cfg, args.threshold)
        emit(setting=label, pruned_fraction_of_ffn2=round(n_zero / n_all, 4), **copied.summary(),
             prompt_following=round(follows(pipe, groups.heldout, seeds, cfg), 3), seconds=round(time.time() - t0))

    evaluate("unedited", None)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        unions = {}
        (Path(tmp) / "subset").mkdir()
        (Path(tmp) / "subset" / "0.zarr").symlink_to(subset_store.resolve())
        for sp in sparsities:
            out = Path(tmp) / f"sp{sp}"
            locate_collection("wanda", {"sparsity": sp, "tau": args.tau}, args.model, args.collection, 1, out,
                              subsets_dir=str(Path(tmp) / "subset"), null=str(act_dir / "null.zarr"))
            unions[sp] = read_mask_set(out / "0.zarr").layer_masks()
            evaluate(f"sparsity {sp}, tau {args.tau}, all layers", unions[sp])
        top = unions[max(sparsities)]
        for group in args.layer_groups.split(","):
            if group == "all":
                continue
            prefix = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}[group]
            evaluate(f"sparsity {max(sparsities)}, tau {args.tau}, {group} blocks only",
                     {n: m for n, m in top.items() if n.startswith(prefix)})


if __name__ == "__main__":
    main()
