"""What the testbed's CPU-side image work costs: building its dataset (photo crops kept mutually dissimilar by
SSIM), reading generated scenes back for prompt following (`describe_scene`), and copy similarity (SSIM of
generated images against the training photos, as evaluation and the attacks score them).

Each tree (a checkout of this repository) runs in its own process with its `workflow/` first on PYTHONPATH, the
trees interleaved, `--repeats` times each after one warm-up run; prints the median CPU seconds (the process's
rusage) of each part and, with two trees, their ratios. Also checks that the trees' outputs agree (the dataset's
digest, every scene reading, the SSIM matrix bit for bit).

    python -m benchmarks.scoring_cpu --trees /path/to/old/checkout . --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# Runs inside each tree's process: prints one JSON line of CPU seconds and output digests.
PROBE = r"""
import hashlib, json, tempfile, time
from pathlib import Path
import numpy as np
from PIL import Image
from memprune.testbed.dataset import DatasetSpec, generate_dataset, dataset_digest, read_manifest
from memprune.testbed.scenes import describe_scene, render_scene, scene_combinations
from memprune.evaluate.metrics import ssim_matrix

out = {}
with tempfile.TemporaryDirectory() as tmp:
    t = time.process_time()
    manifest = generate_dataset(DatasetSpec(), Path(tmp) / "data")
    out["dataset"] = time.process_time() - t
    out["dataset_digest"] = dataset_digest(manifest.parent)
    photos = np.stack([np.asarray(Image.open(manifest.parent / r["image"]).convert("RGB"))  # each photo once
                       for r in read_manifest(manifest) if r["split"] == "train" and r["group"] != "generalization"])
rng = np.random.default_rng(0)
scenes = [render_scene(a, rng) for a in scene_combinations()]
scenes += [np.clip(s + rng.normal(0, 25, s.shape), 0, 255).astype(np.uint8) for s in scenes]  # decoded-like noise
t = time.process_time()
readings = [describe_scene(s) for s in scenes]
out["describe_scene"] = time.process_time() - t
out["readings_digest"] = hashlib.sha256(json.dumps(readings, sort_keys=True).encode()).hexdigest()
generated = np.stack(scenes[:200])
t = time.process_time()
sim = ssim_matrix(generated, photos)
out["ssim"] = time.process_time() - t
out["ssim_digest"] = hashlib.sha256(sim.tobytes()).hexdigest()
out["n"] = {"scenes": len(scenes), "ssim": list(sim.shape)}
print(json.dumps(out))
"""

PARTS = ("dataset", "describe_scene", "ssim")


def probe(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "workflow"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: probe failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(".")], help="checkouts to compare (1 or 2)")
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    trees = [t.resolve() for t in opts.trees]
    for tree in trees:
        probe(tree)  # warm-up: page cache, imports compiled
    samples = [[] for _ in trees]
    for _ in range(opts.repeats):
        for i, tree in enumerate(trees):
            samples[i].append(probe(tree))
    first = samples[0][0]
    print(f"sizes: {first['n']['scenes']} scenes read back; SSIM {first['n']['ssim'][0]} x {first['n']['ssim'][1]}")
    for key in ("dataset_digest", "readings_digest", "ssim_digest"):
        same = len({s[key] for runs in samples for s in runs}) == 1
        print(f"{key}: {'identical in every run of every tree' if same else 'DIFFERS'}")
    print(f"{'part':16s} " + "  ".join(f"{'tree ' + str(i) + ' CPU s':>12s}" for i in range(len(trees)))
          + ("  ratio (tree 1 / tree 0)" if len(trees) == 2 else ""))
    for part in PARTS:
        med = [statistics.median(s[part] for s in runs) for runs in samples]
        line = f"{part:16s} " + "  ".join(f"{m:12.2f}" for m in med)
        if len(med) == 2:
            line += f"  {med[1] / med[0]:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
