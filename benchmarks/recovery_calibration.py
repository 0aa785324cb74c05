"""Calibrate the recovery attack (attacks/recovery.py) on controls only: how often its budget and copy decision
"recover" a photo the unedited model never memorized. Finding Dori chose its budget so that non-memorized images
need far more steps; here the false-recovery rate is measured on

* single-seen photos: the first `--controls` photos of each set of the config's `recovery.controls`;
* never-seen crops: `--new-photos` crops the model never saw (the attack's own `new_photos`, seed + 10000);

never on the method targets. `run` searches every control from each start of `--inits` (the config's
`recovery.inits` by default) for the largest of `--budgets` Adam steps at each `--lrs`, and generates with the
config's seeds from the start (budget 0) and from the embedding after each budget's steps (Adam at a fixed lr
does not depend on how many steps follow, so that is the smaller budget's own search; only the draws of the
controls after the first differ from a run at that budget, as another seed's would). It stores every seed's
SSIM, so `table` decides copies at any threshold and number of agreeing seeds afterwards, with Wilson 95%
intervals per kind, per start and over all controls. The search's other settings (batch, seed, generation
steps, guidance) and the model come from the config, as the workflow runs them. `--chunk K:N` runs the K-th N
controls (the random draws of the ones before it skipped), for two 1-thread processes on 2 cores.

    python -m benchmarks.recovery_calibration run --config config.yaml --controls 40 --new-photos 40 \\
        --budgets 20,30,40,50 --chunk 0:40 --out results/recovery_calibration/planted_0.nc
    # and beside it the same with --chunk 1:40 --out results/recovery_calibration/planted_1.nc
    python -m benchmarks.recovery_calibration table results/recovery_calibration/planted_*.nc \\
        --thresholds 0.4,0.45,0.5 --min-seeds 3,4

Needs the testbed's dataset (`snakemake --cores 1 results/<model>/data [--configfile ...]`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from memprune.bench import ROOT, default_config, emit

def float_list(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def controls(plan, rec, data: str, n_single: int, n_new: int, seed: int) -> tuple[list[dict], list[str]]:
    """The control photos, as `recover` builds its targets ({prompt, group, image, unrelated}), and the prompts
    whose embeddings the random start is drawn like (the first 64 of the recovery sets, as the workflow's)."""
    from memprune.evaluate.training_images import first_photos
    from memprune.formats.prompts import read_prompts
    from memprune.testbed.derived import new_photos

    groups = {s: read_prompts(Path(plan.sets[s].file)) for s in rec.sets + rec.controls}
    everyone = [p for ps in groups.values() for p in ps]
    targets = first_photos({s: groups[s] for s in rec.controls}, data, max_per_group=n_single) if n_single else []
    for t in targets:
        t["unrelated"] = everyone[(everyone.index(t["prompt"]) + len(everyone) // 2) % len(everyone)]
    if n_new:
        images, captions = new_photos(Path(data), n_new, seed=10_000 + seed)
        targets += [{"prompt": c, "group": "never_seen", "image": im, "unrelated": everyone[0]}
                    for im, c in zip(images, captions)]
    return targets, everyone[:64]


def run(args) -> None:
    import torch
    import xarray as xr

    from memprune.attacks import recovery
    from memprune.evaluate.copies import CopyMetric
    from memprune.formats.store import write_netcdf
    from memprune.plan.compare import Recovery
    from memprune.plan.config import Plan
    from memprune.sampling import SamplingConfig
    from memprune.variants import get

    torch.set_num_threads(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plan = Plan(default_config(args.config), ROOT)
    rec = Recovery(plan)
    if not rec.enabled or not plan.is_testbed:
        raise SystemExit(f"{args.config}: no recovery attack on a testbed to calibrate")
    base = json.loads(rec.spec)
    budgets = sorted(set(args.budgets))
    inits = args.inits.split(",") if args.inits else list(rec.cfg.get("inits", ["prompt"]))
    data = args.data or plan.data_dir
    seed = base.get("seed", 0)
    targets, reference_prompts = controls(plan, rec, data, args.controls, args.new_photos, seed)
    first = 0
    if args.chunk:
        k, n = int_list(args.chunk.replace(":", ","))
        first = min(k * n, len(targets))
        targets = targets[first:first + n]
    if not targets:
        raise SystemExit("no controls in this chunk")
    none = get("none")
    pipe = none.load(plan.model_dir, None, args.device, "auto", None)
    unet = pipe.unet
    unet.requires_grad_(False)
    size = plan.image_size()
    reference = recovery.embed(pipe, reference_prompts)
    latent_shape = recovery.image_latent(pipe, targets[0]["image"]).shape
    T, I, L, B = len(targets), len(inits), len(args.lrs), len(budgets) + 1
    S = len(base.get("seeds", recovery.RecoverySpec().seeds))
    ssim = np.full((L, B, T, I, S), np.nan)
    losses, seconds = np.full((L, T, I, budgets[-1]), np.nan), np.full((L, T, I), np.nan)
    started = time.perf_counter()
    for li, lr in enumerate(args.lrs):
        spec = recovery.RecoverySpec(**{**base, "steps": budgets[-1], "lr": lr})
        metric = CopyMetric(spec.copy_threshold)
        cfg = SamplingConfig(steps=spec.sample_steps, guidance=spec.guidance, batch_size=max(8, S), **size)
        gen = torch.Generator().manual_seed(spec.seed)
        if first:
            recovery.skip_draws(gen, first, inits, spec, latent_shape, reference.mean(0, keepdim=True).shape,
                                pipe.scheduler.config.num_train_timesteps)
        for ti, target in enumerate(targets):
            z0 = recovery.image_latent(pipe, target["image"])
            for ii, init in enumerate(inits):
                start = recovery.start_embedding(pipe, init, target["prompt"], target["unrelated"], reference, gen)
                kept = {}

                def keep(k, y, kept=kept):
                    if k in budgets:
                        kept[k] = y.clone()

                t0 = time.perf_counter()
                with torch.enable_grad():
                    _, losses[li, ti, ii] = recovery.search(unet, pipe.scheduler, z0, start, spec, gen, on_step=keep)
                seconds[li, ti, ii] = time.perf_counter() - t0
                for bi, emb in enumerate([start] + [kept[b] for b in budgets]):
                    images, _ = none.generate_embeds(pipe, emb.expand(S, -1, -1).to(unet.dtype), list(spec.seeds),
                                                     cfg, {})
                    ssim[li, bi, ti, ii] = metric.similarity(images, target["image"][None])[:, 0]
                emit(lr=lr, target=first + ti, group=target["group"], init=init, search_s=round(seconds[li, ti, ii], 2),
                     ssim_median={b: round(float(np.median(ssim[li, bi, ti, ii])), 3)
                                  for bi, b in enumerate([0] + budgets)})
    ds = xr.Dataset(
        {"ssim": (("lr", "budget", "target", "init", "seed"), ssim,
                  {"long_name": "SSIM to the control photo of the generations from the embedding after `budget` "
                                "Adam steps (0: the start; init=prompt: the photo's own caption)"}),
         "loss": (("lr", "target", "init", "search_step"), losses, {"long_name": "the search's loss per step"}),
         "seconds": (("lr", "target", "init"), seconds, {"long_name": "seconds of the longest search"})},
        coords={"lr": list(args.lrs), "budget": [0] + budgets, "target": first + np.arange(T),
                "prompt": ("target", np.array([t["prompt"] for t in targets], dtype=object)),
                "group": ("target", np.array([t["group"] for t in targets], dtype=object)),
                "init": inits, "seed": list(spec.seeds), "search_step": np.arange(budgets[-1])},
        attrs={"config": str(args.config), "model": str(plan.model_dir), "data": str(data),
               "spec": json.dumps({**base, "steps": budgets[-1]}), "controls": args.controls,
               "new_photos": args.new_photos, "wall_s": time.perf_counter() - started,
               "torch_threads": args.threads})
    write_netcdf(ds, args.out)
    emit(out=str(args.out), targets=T, wall_s=round(ds.attrs["wall_s"], 1))


def rates(ds, thresholds: list[float], min_seeds: list[int]) -> list[dict]:
    """One row per (lr, budget, threshold, agreeing seeds, kind, start): recovered k of n with its Wilson 95%
    interval; kind and start "all" pool every control and both starts (each (photo, start) one trial)."""
    from memprune.evaluate.intervals import wilson

    groups = [str(g) for g in dict.fromkeys(ds.group.values)]
    inits = [str(i) for i in ds.init.values]
    rows = []
    for lr in ds.lr.values:
        for budget in ds.budget.values:
            sim = ds.ssim.sel(lr=lr, budget=budget).values  # (target, init, seed)
            for t in thresholds:
                for m in min_seeds:
                    hit = (sim >= t).sum(-1) >= m  # (target, init)
                    cells = [(g, i) for g in groups for i in inits] + [(g, "all") for g in groups] + [("all", "all")]
                    for g, i in cells:
                        rows_g = np.ones(len(hit), bool) if g == "all" else ds.group.values == g
                        cols = slice(None) if i == "all" else [inits.index(i)]
                        h = hit[rows_g][:, cols]
                        k, n = int(h.sum()), int(h.size)
                        lo, hi = wilson(k, n)
                        rows.append({"lr": float(lr), "steps": int(budget), "threshold": t, "min_seeds": m,
                                     "kind": g, "start": i, "k": k, "n": n, "rate": k / n, "lo": lo, "hi": hi})
    return rows


def table(args) -> None:
    import pandas as pd
    import xarray as xr

    parts = [xr.load_dataset(p) for p in args.files]
    ds = xr.concat(sorted(parts, key=lambda d: int(d.target.values[0])), dim="target", data_vars="minimal",
                   coords="minimal", compat="override")
    seeds = ds.sizes["seed"]
    frame = pd.DataFrame(rates(ds, args.thresholds, args.min_seeds or [seeds // 2 + 1]))
    frame["interval"] = [f"{100 * r:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
                         for r, lo, hi in zip(frame.rate, frame.lo, frame.hi)]
    if args.csv:
        frame.to_csv(args.csv, index=False)
    kinds = ", ".join(f"{n} {g}" for g, n in zip(*np.unique(ds.group.values.astype(str), return_counts=True)))
    print(f"{ds.attrs.get('model')}: controls {kinds}; seeds {ds.seed.values.tolist()}; "
          f"{float(ds.seconds.mean()):.1f} s per search of {int(ds.budget.max())} steps")
    print(frame.drop(columns=["rate", "lo", "hi"]).to_string(index=False))
    setting = ["lr", "steps", "threshold", "min_seeds"]
    pooled = frame[(frame.kind == "all") & (frame.start == "all")]
    worst = frame[(frame.kind != "all") & (frame.start == "all")].groupby(setting).rate.max()
    pooled = pooled.assign(each_kind_ok=[worst[tuple(r)] <= args.max_rate for r in pooled[setting].values])
    ok = pooled[pooled.rate <= args.max_rate]
    print(f"settings whose false recovery over all controls and starts is <= {args.max_rate:g} "
          f"(each_kind_ok: every kind's too):")
    print(ok[setting + ["k", "n", "interval", "each_kind_ok"]].to_string(index=False) if len(ok) else "none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(required=True)
    p = sub.add_parser("run", help="search the controls and store every seed's SSIM per budget")
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="a testbed config (schema defaults filled)")
    p.add_argument("--data", default=None, help="the testbed dataset (default: the config's results/<model>/data)")
    p.add_argument("--controls", type=int, default=40, help="single-seen photos per control set")
    p.add_argument("--new-photos", type=int, default=40, help="never-seen crops")
    p.add_argument("--budgets", type=int_list, default=[25, 50], help="Adam steps, comma-separated")
    p.add_argument("--lrs", type=float_list, default=[0.1], help="Adam learning rates, comma-separated")
    p.add_argument("--inits", default=None, help="starts, comma-separated (default: the config's recovery.inits)")
    p.add_argument("--chunk", default=None, help="K:N, the K-th run of N controls")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)
    p = sub.add_parser("table", help="false recovery per setting, kind and start, with Wilson 95%% intervals")
    p.add_argument("files", nargs="+", help="the run's files (chunks are joined)")
    p.add_argument("--thresholds", type=float_list, default=[0.4], help="SSIM thresholds, comma-separated")
    p.add_argument("--min-seeds", type=int_list, default=None,
                   help="seeds that must reach the threshold, comma-separated (default: most of them)")
    p.add_argument("--max-rate", type=float, default=0.05, help="the false-recovery rate a setting must keep")
    p.add_argument("--csv", default=None)
    p.set_defaults(func=table)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
