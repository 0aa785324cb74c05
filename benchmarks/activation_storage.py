"""Bytes per prompt of the stored activation statistics, for Stable Diffusion 1.5 shapes (16 ff.net.2 layers,
input widths 1280 ... 5120, 51 UNet calls of PNDM's 50 steps), on a synthetic capture of a few prompts written by
the capture command's own code (`activations.capture_to_dataset` + `store.write_zarr`).

Prints, per layout: raw bytes per prompt (float32 array sizes) and bytes on disk per prompt (zarr v3, default
compression), the old layout (both CFG branches stored) next to the current one (only the branch the localizers
read), and checks that the masks computed from both are identical.

    python -m benchmarks.activation_storage [--prompts 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

SD15_IN = [1280] * 2 + [2560] * 2 + [5120] * 2 + [5120] + [5120] * 3 + [2560] * 3 + [1280] * 3  # down, mid, up
STEPS = 51


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    import xarray as xr

    from memprune.capture.hooks import Capture, capture_to_dataset
    from memprune.capture.gather import statistic_sums
    from memprune.localize.wanda_packed import memorized_masks_packed
    from memprune.formats.store import open_zarr, write_zarr

    rng = np.random.default_rng(args.seed)
    layers = [f"layer{i:02d}.ff.net.2" for i in range(len(SD15_IN))]
    # sums of squares over tokens are positive, heavy-tailed per feature: a log-normal stands in for them
    sumsq = {name: np.exp(rng.normal(0, 1, (args.prompts, STEPS, 2, n))).astype(np.float32)
             for name, n in zip(layers, SD15_IN)}
    cap = Capture(prompts=[f"prompt {i}" for i in range(args.prompts)], layers=layers, sumsq=sumsq,
                  timesteps=np.linspace(999, 0, STEPS))
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        old = xr.Dataset({n: (("prompt", "step", "branch", f"{n}.feature"), a) for n, a in sumsq.items()},
                         coords={"branch": np.array(["uncond", "cond"], dtype=object), "step": np.arange(STEPS)})
        write_zarr(old, Path(tmp) / "old.zarr")
        results["old: both CFG branches"] = (sum(a.nbytes for a in sumsq.values()), disk_bytes(Path(tmp) / "old.zarr"))
        for variant in ("paper", "reference"):
            ds = capture_to_dataset(cap, {}, variant)
            write_zarr(ds, Path(tmp) / f"{variant}.zarr")
            results[f"now, variant {variant}"] = (sum(ds[n].nbytes for n in layers),
                                                  disk_bytes(Path(tmp) / f"{variant}.zarr"))
        # the masks do not change: the paper variant's statistic from the new store == the old store's cond branch
        new = open_zarr(Path(tmp) / "paper.zarr", load=False)
        w = torch.randn(320, SD15_IN[0], generator=torch.Generator().manual_seed(0))
        mem_old = old[layers[0]].sel(branch="cond").sum("prompt").values.astype(np.float64)
        mem_new = statistic_sums(new, layers[0], "paper", "paper.zarr")
        null = mem_old / args.prompts * 0.9
        same = np.array_equal(memorized_masks_packed(w, torch.from_numpy(mem_old).float(),
                                                     torch.from_numpy(null).float(), args.prompts, 0.01),
                              memorized_masks_packed(w, torch.from_numpy(mem_new).float(),
                                                     torch.from_numpy(null).float(), args.prompts, 0.01))
    for label, (raw, disk) in results.items():
        print(f"{label:26s} raw {raw / args.prompts / 1e6:6.2f} MB per prompt, "
              f"on disk {disk / args.prompts / 1e6:6.2f} MB per prompt")
    base = results["old: both CFG branches"][0]
    print(f"ratio now / old (raw): {results['now, variant paper'][0] / base:.3f}; masks from both identical: {same}")
    print(f"SD1.5 config's ~900 prompts: {results['now, variant paper'][0] / args.prompts * 900 / 1e9:.1f} GB raw "
          f"(old {base / args.prompts * 900 / 1e9:.1f} GB)")


if __name__ == "__main__":
    main()
