"""Compare testbed training recipes: train several variants in parallel and run the testbed report on each.

Meant for a machine with a GPU (each variant is one process; they share the card), to choose a recipe whose
CPU cost still fits the 60-minute budget of `rules/testbed.smk`. The recipe's CPU cost is measured separately
(`--cpu-steps`: seconds per UNet step on this machine's CPU, for each variant).

    python experiments/testbed_recipe/testbed_recipe_sweep.py --out OUTDIR [--variants A,B] [--device cuda]

Writes OUTDIR/results.json (one entry per variant as it finishes: report summary, VAE read-back, seconds),
and for the best variant (highest prompt following among those meeting the copy bars) its weights as
OUTDIR/best_{unet,text_encoder}.safetensors plus OUTDIR/best_rest.tar (configs, tokenizer, VAE).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tarfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from memprune.bench import ROOT

# name -> (dataset overrides, train overrides, model overrides)
VARIANTS = {
    "A_base": ({}, {}, {}),
    "B_ema": ({}, {"ema_decay": 0.999}, {}),
    "C_r12": ({"renders_per_scene": 12}, {}, {}),
    "D_r12_ema": ({"renders_per_scene": 12}, {"ema_decay": 0.999}, {}),
    "E_r12_ema_text": ({"renders_per_scene": 12}, {"ema_decay": 0.999}, {"text_hidden": 96, "text_layers": 4}),
    "F_r12_ema_lr1e3": ({"renders_per_scene": 12}, {"ema_decay": 0.999, "lr": 1e-3}, {}),
    "G_r18_ema": ({"renders_per_scene": 18}, {"ema_decay": 0.999}, {}),
    "H_r12_ema_vae5k": ({"renders_per_scene": 12}, {"ema_decay": 0.999, "vae_steps": 5000}, {}),
}


def vae_readback(model_dir: Path, data_dir: Path, device: str) -> dict:
    """Fraction of scene images whose VAE reconstruction the scene reader reads correctly (held-out, train)."""
    import torch
    from diffusers import AutoencoderKL

    from memprune.testbed.dataset import load_images, read_manifest
    from memprune.testbed.scenes import attribute_matches

    vae = AutoencoderKL.from_pretrained(model_dir / "vae").to(device).eval()
    rows = read_manifest(data_dir / "manifest.jsonl")
    out = {}
    for split in ("heldout", "train"):
        rs = [r for r in rows if r["group"] == "generalization" and r["split"] == split][:300]
        imgs = load_images(data_dir, rs)
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        with torch.no_grad():
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out[split] = float(attribute_matches(rec, rs).all(1).mean())
    return out


def run_variant(name: str, work: Path, device: str, unet_steps: int | None, threads: int) -> dict:
    from memprune.testbed.dataset import DatasetSpec, generate_dataset
    from memprune.testbed.model import ModelSpec
    from memprune.testbed.report import testbed_report
    from memprune.testbed.train import TrainSpec, train_testbed

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    data_o, train_o, model_o = VARIANTS[name]
    spec = DatasetSpec(**data_o)
    data_dir = work / f"data_r{spec.renders_per_scene}_{name}"
    if not data_dir.exists():
        generate_dataset(spec, data_dir)
    train = dict(train_o)
    if unet_steps:  # a quick plumbing check shortens every stage
        train.update(unet_steps=unet_steps, vae_steps=min(unet_steps, train.get("vae_steps", 3000)),
                     decoder_steps=min(unet_steps, 3000))
    tspec = TrainSpec(model=ModelSpec(**model_o), device=device, threads=threads, **train)
    model_dir = work / f"model_{name}"
    t0 = time.time()
    train_testbed(data_dir / "manifest.jsonl", model_dir, tspec,
                  ROOT / "resources/clip_bpe/bpe_simple_vocab_16e6.txt.gz",
                  progress=False)
    t_train = time.time() - t0
    t0 = time.time()
    summary = testbed_report(model_dir, data_dir, work / f"report_{name}.nc", work / f"grid_{name}.png",
                             seeds=[0, 1, 2, 3], guidances=[2.0, 4.0], threshold=0.4, steps=50, batch_size=256,
                             max_single=100, device=device, dtype="float32")
    t_report = time.time() - t0
    return {"variant": name, "dataset": asdict(spec), "train": asdict(tspec), "train_seconds": round(t_train, 1),
            "report_seconds": round(t_report, 1), "summary": summary,
            "vae_readback": vae_readback(model_dir, data_dir, device),
            "model_dir": str(model_dir)}


def _worker(name, work, device, unet_steps, threads, queue):
    import logging

    logging.basicConfig(filename=str(work / f"log_{name}.txt"), level=logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        queue.put(run_variant(name, work, device, unet_steps, threads))
    except Exception:
        queue.put({"variant": name, "error": traceback.format_exc()})


def meets_bars(r: dict) -> bool:
    s = r.get("summary")
    return bool(s) and max(s["dup_copy_rate"]) >= 0.8 and max(s["single_copy_rate"]) <= 0.05


def pack_best(r: dict, out: Path) -> None:
    model = Path(r["model_dir"])
    for part in ("unet", "text_encoder"):
        big = next((model / part).glob("*.safetensors"))
        (out / f"best_{part}.safetensors").write_bytes(big.read_bytes())
    with tarfile.open(out / "best_rest.tar", "w") as tar:
        for f in sorted(model.rglob("*")):
            if f.is_file() and not (f.parent.name in ("unet", "text_encoder") and f.suffix == ".safetensors"):
                tar.add(f, arcname=str(f.relative_to(model)))


def cpu_step_seconds(names: list[str], steps: int) -> dict:
    """Seconds per UNet training step on this machine's CPU (batch 64), per variant's model size."""
    import torch

    from memprune.testbed.model import ModelSpec, build_text_encoder, build_tokenizer, build_unet

    tok = build_tokenizer(ROOT / "resources/clip_bpe/bpe_simple_vocab_16e6.txt.gz", 20)
    out = {}
    for name in names:
        spec = ModelSpec(**VARIANTS[name][2])
        unet, te = build_unet(spec, 8), build_text_encoder(spec, tok)
        params = list(unet.parameters()) + list(te.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        ids = torch.randint(0, 1000, (64, 20))
        z = torch.randn(64, spec.latent_channels, 8, 8)
        t = torch.randint(0, 1000, (64,))
        for i in range(steps + 3):
            if i == 3:
                t0 = time.perf_counter()
            loss = unet(z, t, encoder_hidden_states=te(ids)[0]).sample.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[name] = (time.perf_counter() - t0) / steps
        print(f"{name}: {out[name]:.3f} s/step on CPU ({torch.get_num_threads()} threads)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/memprune_sweep"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--unet-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=0, help="seconds: stop unfinished variants, keep the rest")
    ap.add_argument("--cpu-steps", type=int, default=0, help="only measure CPU seconds per UNet step, with N steps")
    args = ap.parse_args()
    names = args.variants.split(",")
    if args.cpu_steps:
        cpu_step_seconds(names, args.cpu_steps)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(n, args.work, args.device, args.unet_steps, args.threads, queue))
             for n in names]
    for p in procs:
        p.start()
    import queue as queue_mod

    results, t0 = [], time.time()
    while len(results) < len(procs):
        try:
            r = queue.get(timeout=5)
        except queue_mod.Empty:
            if args.deadline and time.time() - t0 > args.deadline:
                done = {r["variant"] for r in results}
                for n, p in zip(names, procs):
                    if n not in done:
                        log = args.work / f"log_{n}.txt"
                        last = log.read_text().splitlines()[-1:] if log.exists() else []
                        print(f"deadline: stopping {n}; last log line: {last}", flush=True)
                        p.terminate()
                break
            continue
        r["finished_after_s"] = round(time.time() - t0, 1)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "train"}), flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for p in procs:
        p.join(timeout=10)
    ok = [r for r in results if meets_bars(r)]
    if ok:
        best = max(ok, key=lambda r: max(r["summary"]["prompt_following"]))
        print("best:", best["variant"], flush=True)
        pack_best(best, args.out)
        grid = args.work / f"grid_{best['variant']}.png"
        if grid.exists():
            (args.out / "best_grid.png").write_bytes(grid.read_bytes())


if __name__ == "__main__":
    main()
