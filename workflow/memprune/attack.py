"""Extraction attack (Carlini et al., USENIX Security 2023) and memorization detection (Wen et al., ICLR 2024).

Extraction attack, as the paper's section 5.4 runs it:
  1. generate N images per candidate prompt, each from its own seed;
  2. distance between two images = Carlini's tiled L2 (`metrics.tiled_l2`: each image cut into grid x grid
     tiles, per-tile RMS difference of pixels in [0, 1], maximum over tiles);
  3. graph of the N images, an edge where two images are closer than `distance_threshold`; the prompt is
     "identified as memorized" when the graph's largest clique has at least `min_clique` images;
  4. an identified prompt is "actually memorized" when the clique's images match the prompt's training image:
     the median SSIM of the clique's images to it (max over the caption's training images) reaches
     `copy_threshold`.
Steps 1-2 (the costly part) are stored per chunk of prompts with the SSIM to the training images, so changing
a threshold reruns only the cheap steps 3-4.

Threshold on the testbed (32x32 images, grid 4 = 8x8-pixel tiles, pixels in [0, 1]): the paper's 50.0 is on
its own scale (512 px SD images), not ours. Measured on the shipped testbed (12 seeds x 10 prompts per group,
DDIM 10/20/50 steps, guidance 2): generations of a duplicated prompt lie 0.008-0.02 apart (10th-90th
percentile of pairs), single-seen prompts' generations 0.14-0.58, and no two of the 250 distinct training
photos are closer than 0.095 (1% of pairs below 0.15). The default 0.05 sits between the two: two images
closer than that are near-copies of each other, and cannot be two different training photos.

Detection (Wen et al.): a memorized prompt's text steers the denoiser hard, so the text-conditional part of
its prediction is large. score(prompt) = mean over seeds and over the first `score_steps` DDIM steps of
||eps(x_t, c) - eps(x_t, null)||_2 (norm over the latent's channels and pixels), along the CFG trajectory the
pipeline itself would follow. Reported as ROC AUC and TPR at 1% FPR against the ground truth.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- extraction


def pairwise_tiled_distances(images: np.ndarray, grid: int = 4) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, N) float32 tiled L2 between every pair, symmetric, zero diagonal."""
    from .metrics import tiled_l2

    d = tiled_l2(images, images, grid)
    d = np.minimum(d, d.T)  # the |x|^2 + |y|^2 - 2xy expansion is symmetric up to rounding
    np.fill_diagonal(d, 0.0)
    return d.astype(np.float32)


def largest_clique(distances: np.ndarray, threshold: float) -> list[int]:
    """Indices (sorted) of a maximum clique of the graph joining images closer than `threshold`.

    Exact (networkx's branch-and-bound `max_weight_clique` with unit weights); a single image when no two
    images are close.
    """
    import networkx as nx

    n = len(distances)
    if n == 0:
        return []
    close = (distances < threshold) & ~np.eye(n, dtype=bool)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(*np.nonzero(np.triu(close, 1))))
    clique, _ = nx.max_weight_clique(graph, weight=None)
    return sorted(int(i) for i in clique)


def generate_candidates(pipe, prompts: list[str], seeds: list[int], cfg, grid: int = 4,
                        references: list[np.ndarray | None] | None = None, progress: bool = False) -> dict:
    """Step 1-2 of the attack for a chunk of prompts: every prompt x seed image, pairwise tiled distances per
    prompt, and each image's SSIM to the prompt's training images (max over them; NaN without references).

    Returns {"images": (P, S, H, W, 3) uint8, "distance": (P, S, S) float32, "ssim_truth": (P, S) float32}.
    """
    from .metrics import ssim_matrix
    from .sampling import generate

    n_p, n_s = len(prompts), len(seeds)
    flat_p = [p for p in prompts for _ in seeds]
    flat_s = [s for _ in prompts for s in seeds]
    images = generate(pipe, flat_p, flat_s, cfg, progress=progress)
    images = images.reshape(n_p, n_s, *images.shape[1:])
    distance = np.stack([pairwise_tiled_distances(images[i], grid) for i in range(n_p)]) if n_p else np.zeros((0, n_s, n_s), np.float32)
    ssim_truth = np.full((n_p, n_s), np.nan, dtype=np.float32)
    for i, refs in enumerate(references or [None] * n_p):
        if refs is not None and len(refs):
            ssim_truth[i] = ssim_matrix(images[i], refs).max(axis=1)
    return {"images": images, "distance": distance, "ssim_truth": ssim_truth}


def identify(distance: np.ndarray, ssim_truth: np.ndarray, threshold: float, min_clique: int,
             copy_threshold: float) -> dict:
    """Steps 3-4 for each prompt. distance (P, S, S), ssim_truth (P, S) (NaN: no ground truth).

    Returns per prompt: "clique" (P, S) bool members of the largest clique, "clique_size" (P,),
    "identified" (P,) bool, "clique_ssim" (P,) median SSIM of the clique's images to the training image,
    "actually_memorized" (P,) bool (identified and clique_ssim >= copy_threshold; False without ground truth),
    "has_truth" (P,) bool.
    """
    n_p, n_s = ssim_truth.shape
    clique = np.zeros((n_p, n_s), dtype=bool)
    for i in range(n_p):
        clique[i, largest_clique(distance[i], threshold)] = True
    size = clique.sum(1)
    identified = size >= min_clique
    has_truth = ~np.isnan(ssim_truth).all(1)
    clique_ssim = np.array([np.median(ssim_truth[i, clique[i]]) if has_truth[i] else np.nan for i in range(n_p)])
    actually = identified & has_truth & (np.nan_to_num(clique_ssim, nan=-np.inf) >= copy_threshold)
    return {"clique": clique, "clique_size": size, "identified": identified, "clique_ssim": clique_ssim,
            "actually_memorized": actually, "has_truth": has_truth}


def truth_references(data_dir: Path | None, prompts: list[str]) -> list[np.ndarray | None]:
    """Per prompt, its training images (train split of the testbed manifest), or None (no dataset, or a caption
    not in it)."""
    if data_dir is None:
        return [None] * len(prompts)
    from .report import load_images
    from .testbed import read_manifest

    rows = read_manifest(Path(data_dir) / "manifest.jsonl")
    wanted = set(prompts)
    by_caption: dict[str, list[dict]] = {}
    for r in rows:
        if r["caption"] in wanted and r.get("split", "train") == "train":
            by_caption.setdefault(r["caption"], []).append(r)
    return [load_images(Path(data_dir), by_caption[p]) if p in by_caption else None for p in prompts]


def attack_chunk(model: str, prompts: list[str], group: str, seeds: list[int], cfg, out: Path, grid: int = 4,
                 data_dir: Path | None = None, pruned: str | None = None, device: str = "auto",
                 dtype: str = "auto", scheduler: str | None = None, attrs: dict | None = None) -> None:
    """Generate and measure one chunk of prompts (steps 1-2) on the base model or a pruned checkpoint; netCDF."""
    import xarray as xr

    from . import __version__
    from .models import load_pipeline
    from .testbed import check_trained_on

    if data_dir is not None:  # "actually memorized" needs the photos the model was trained on (testbed models)
        check_trained_on(Path(model), Path(data_dir))
    if pruned:
        from .prune import load_pruned_pipeline

        pipe = load_pruned_pipeline(pruned, base=model, device=device, dtype=dtype, scheduler=scheduler)
    else:
        pipe = load_pipeline(model, device, dtype, scheduler)
    refs = truth_references(data_dir, prompts)
    res = generate_candidates(pipe, prompts, seeds, cfg, grid, refs, progress=True)
    ds = xr.Dataset(
        {
            "images": (("prompt", "seed", "y", "x", "rgb"), res["images"]),
            "distance": (("prompt", "seed", "seed_j"), res["distance"],
                         {"long_name": "Carlini's tiled L2 between the prompt's generations", "tile_grid": grid}),
            "ssim_truth": (("prompt", "seed"), res["ssim_truth"],
                           {"long_name": "SSIM to the prompt's training image (max over them); NaN: none known"}),
        },
        coords={"prompt": np.array(prompts, dtype=object), "seed": seeds, "seed_j": seeds,
                "group": ("prompt", np.array([group] * len(prompts), dtype=object))},
        attrs={"model": str(model), "pruned": str(pruned or ""), "steps": cfg.steps, "guidance": cfg.guidance,
               "tile_grid": grid, "scheduler": type(pipe.scheduler).__name__, "memprune_version": __version__,
               **(attrs or {})},
    )
    encoding = {"images": {"zlib": True, "complevel": 4}}
    _write_netcdf_encoded(ds, out, encoding)


def _write_netcdf_encoded(ds, target: Path, encoding: dict) -> None:
    from .store import atomic_file

    with atomic_file(target) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)


def analyze_variant(chunks: list[Path], variant: str, threshold: float, min_clique: int, copy_threshold: float,
                    out: Path) -> "xr.Dataset":
    """Steps 3-4 over a variant's chunks -> per-prompt results (netCDF, without the images)."""
    import xarray as xr

    from .store import write_netcdf

    parts = [xr.open_dataset(c, engine="h5netcdf").drop_vars("images").load() for c in chunks]
    ds = xr.concat(parts, dim="prompt") if len(parts) > 1 else parts[0]
    res = identify(ds.distance.values, ds.ssim_truth.values, threshold, min_clique, copy_threshold)
    d = ds.distance.values
    n_s = d.shape[-1]
    off = ~np.eye(n_s, dtype=bool)
    median_pair = np.array([np.median(d[i][off]) for i in range(len(d))]) if n_s > 1 else np.full(len(d), np.nan)
    out_ds = xr.Dataset(
        {
            "clique_size": (("prompt",), res["clique_size"], {"long_name": "size of the largest clique"}),
            "identified": (("prompt",), res["identified"], {"long_name": f"identified as memorized: clique >= {min_clique}"}),
            "actually_memorized": (("prompt",), res["actually_memorized"],
                                   {"long_name": f"identified and the clique's median SSIM to the training image >= {copy_threshold}"}),
            "clique_ssim": (("prompt",), res["clique_ssim"], {"long_name": "median SSIM of the clique's images to the training image"}),
            "has_truth": (("prompt",), res["has_truth"], {"long_name": "the prompt's training image is known"}),
            "clique": (("prompt", "seed"), res["clique"], {"long_name": "member of the largest clique"}),
            "median_pair_distance": (("prompt",), median_pair),
            "ssim_truth": ds.ssim_truth,
        },
        coords={"prompt": ds.prompt.values, "seed": ds.seed.values, "group": ("prompt", ds.group.values)},
        attrs={**{k: v for k, v in ds.attrs.items()}, "variant": variant, "distance_threshold": threshold,
               "min_clique": min_clique, "copy_threshold": copy_threshold},
    )
    write_netcdf(out_ds, out)
    log.info("%s: %d of %d prompts identified, %d actually memorized", variant, int(res["identified"].sum()),
             len(d), int(res["actually_memorized"].sum()))
    return out_ds


def attack_table(variant_files: list[Path]) -> "pd.DataFrame":
    """Table 1 in long form: per (variant, group): prompts, identified, actually memorized (counts and %)."""
    import pandas as pd
    import xarray as xr

    rows = []
    for f in variant_files:
        ds = xr.open_dataset(f, engine="h5netcdf")
        groups = list(dict.fromkeys(ds.group.values.tolist()))
        for g in groups:
            sel = ds.group.values == g
            n = int(sel.sum())
            has_truth = bool(ds.has_truth.values[sel].any())
            ident = int(ds.identified.values[sel].sum())
            actual = int(ds.actually_memorized.values[sel].sum()) if has_truth else None
            rows.append({"variant": ds.attrs["variant"], "group": g, "prompts": n,
                         "identified": ident, "identified_pct": round(100 * ident / n, 1),
                         "actually_memorized": actual,
                         "actually_memorized_pct": round(100 * actual / n, 1) if actual is not None else None})
        ds.close()
    return pd.DataFrame(rows)


def format_table(table: "pd.DataFrame") -> str:
    """The paper's Table 1 layout: rows identified / actually memorized, columns variant / group."""
    import pandas as pd

    def cell(count, n, pct):
        return "n/a" if pd.isna(count) else f"{int(count)}/{n} ({pct:.0f}%)"

    rows = list(table.itertuples())
    head = ["", *[f"{r.variant} / {r.group}" for r in rows]]
    body = [["identified as memorized", *[cell(r.identified, r.prompts, r.identified_pct) for r in rows]],
            ["actually memorized", *[cell(r.actually_memorized, r.prompts, r.actually_memorized_pct) for r in rows]]]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def attack_figure(variant_files: list[Path], chunk_files: dict[str, list[Path]], data_dir: Path | None, out: Path,
                  n_prompts: int = 6, n_seeds: int = 6) -> None:
    """PNG: per variant, the first `n_prompts` prompts of the first group, training image then `n_seeds`
    generations (clique members first)."""
    import xarray as xr
    from PIL import Image

    from .store import atomic_file

    blocks = []
    for f in variant_files:
        res = xr.open_dataset(f, engine="h5netcdf").load()
        variant = res.attrs["variant"]
        imgs = xr.open_dataset(chunk_files[variant][0], engine="h5netcdf").images.values[:n_prompts]
        prompts = res.prompt.values[: len(imgs)].tolist()
        refs = truth_references(data_dir, prompts)
        h, w = imgs.shape[2:4]
        pad = 2
        canvas = np.full((len(imgs) * (h + pad), (1 + n_seeds) * (w + pad), 3), 255, np.uint8)
        for r in range(len(imgs)):
            if refs[r] is not None:
                canvas[r * (h + pad) : r * (h + pad) + h, :w] = refs[r][0]
            order = np.argsort(~res.clique.values[r], kind="stable")[:n_seeds]
            for c, s in enumerate(order):
                canvas[r * (h + pad) : r * (h + pad) + h, (c + 1) * (w + pad) : (c + 1) * (w + pad) + w] = imgs[r, s]
        blocks.append(canvas)
    sep = np.full((blocks[0].shape[0], 8, 3), 255, np.uint8) if blocks else None
    grid = np.concatenate([b for blk in blocks for b in (blk, sep)][:-1], axis=1) if blocks else np.zeros((1, 1, 3), np.uint8)
    big = Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST)
    with atomic_file(out) as tmp:
        big.save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------- detection


def detection_scores(pipe, prompts: list[str], seeds: list[int], steps: int = 50, score_steps: int = 1,
                     guidance: float = 2.0, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Wen et al.'s score per (prompt, seed): (P, S) float64, the mean over the first `score_steps` denoising
    steps of ||eps(x_t, c) - eps(x_t, null)||_2, x_t following the CFG trajectory (`guidance`) from the
    seed's initial latent (drawn exactly as `sampling.generate` draws it)."""
    import torch
    from tqdm.auto import tqdm

    from .sampling import SamplingConfig, _initial_latents

    if not 1 <= score_steps <= steps:
        raise ValueError(f"score_steps must be in [1, steps={steps}], got {score_steps}")
    unet, device = pipe.unet, pipe.unet.device
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # leave the pipeline's own untouched
    cfg = SamplingConfig(steps=steps, guidance=guidance, batch_size=batch_size)
    flat_p = [p for p in prompts for _ in seeds]
    flat_s = [s for _ in prompts for s in seeds]
    scores = np.zeros(len(flat_p))
    with torch.inference_mode():
        null = pipe.encode_prompt([""], device, 1, False)[0]
        for start in tqdm(range(0, len(flat_p), batch_size), desc="detect", disable=not progress):
            sl = slice(start, start + batch_size)
            gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in flat_s[sl]]
            cond = pipe.encode_prompt(flat_p[sl], device, 1, False)[0]
            b = len(cond)
            text = torch.cat([null.expand(b, -1, -1), cond]).to(unet.dtype)
            scheduler.set_timesteps(steps, device=device)
            x = _initial_latents(pipe, gens, cfg) * scheduler.init_noise_sigma
            total = torch.zeros(b, dtype=torch.float64, device=device)
            for t in scheduler.timesteps[:score_steps]:
                x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
                eps_uncond, eps_cond = unet(x_in, t, encoder_hidden_states=text).sample.chunk(2)
                diff = (eps_cond.float() - eps_uncond.float()).flatten(1)
                total += diff.norm(dim=1).double()
                guided = eps_uncond + guidance * (eps_cond - eps_uncond)
                x = scheduler.step(guided, t, x).prev_sample
            scores[sl] = (total / score_steps).cpu().numpy()
    return scores.reshape(len(prompts), len(seeds))


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = np.asarray(positive, float).ravel(), np.asarray(negative, float).ravel()
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float = 0.01) -> float:
    """Largest true-positive rate among thresholds whose false-positive rate is at most `fpr` (a prompt is
    flagged when its score is strictly above the threshold)."""
    pos, neg = np.asarray(positive, float).ravel(), np.asarray(negative, float).ravel()
    if not len(pos) or not len(neg):
        return float("nan")
    allowed = int(np.floor(fpr * len(neg) + 1e-9))  # negatives that may lie above the threshold
    threshold = np.sort(neg)[::-1][allowed] if allowed < len(neg) else -np.inf
    return float((pos > threshold).mean())


def score_prompt_set(model: str, prompts: list[str], seeds: list[int], steps: int, score_steps: int,
                     guidance: float, batch_size: int, out: Path, name: str, device: str = "auto",
                     dtype: str = "auto", scheduler: str | None = None) -> None:
    import xarray as xr

    from . import __version__
    from .models import load_pipeline
    from .store import write_netcdf

    pipe = load_pipeline(model, device, dtype, scheduler)
    s = detection_scores(pipe, prompts, seeds, steps, score_steps, guidance, batch_size, progress=True)
    ds = xr.Dataset(
        {"score_per_seed": (("prompt", "seed"), s,
                            {"long_name": "||eps(x_t, c) - eps(x_t, null)||, mean over the first score_steps steps"}),
         "score": (("prompt",), s.mean(1), {"long_name": "Wen et al.'s detection score, mean over seeds"})},
        coords={"prompt": np.array(prompts, dtype=object), "seed": seeds,
                "group": ("prompt", np.array([name] * len(prompts), dtype=object))},
        attrs={"model": str(model), "steps": steps, "score_steps": score_steps, "guidance": guidance,
               "prompt_set": name, "scheduler": type(pipe.scheduler).__name__, "memprune_version": __version__},
    )
    write_netcdf(ds, out)


def _concat_scores(score_files: list[Path]):
    import xarray as xr

    parts = [xr.open_dataset(f, engine="h5netcdf").load() for f in score_files]
    return xr.concat(parts, dim="prompt") if len(parts) > 1 else parts[0]


def detection_report(score_files: list[Path], positive: list[str], out: Path, csv: Path) -> dict:
    """ROC AUC and TPR at 1% FPR of positives (groups named in `positive`) against each other group and
    against all of them; netCDF with the scores, CSV of scores ranked."""
    import xarray as xr

    from .store import atomic_file, write_netcdf

    ds = _concat_scores(score_files)
    group = ds.group.values
    score = ds.score.values
    is_pos = np.isin(group, positive)
    negatives = [g for g in dict.fromkeys(group.tolist()) if g not in positive]
    comparisons, aucs, tprs = [], [], []
    for neg in [*negatives, "all"] if len(negatives) > 1 else negatives:
        is_neg = ~is_pos if neg == "all" else group == neg
        comparisons.append(f"{'+'.join(positive)}_vs_{neg}")
        aucs.append(roc_auc(score[is_pos], score[is_neg]))
        tprs.append(tpr_at_fpr(score[is_pos], score[is_neg], 0.01))
    order = np.argsort(-score, kind="stable")
    rank = np.empty(len(score), dtype=int)
    rank[order] = np.arange(1, len(score) + 1)
    out_ds = ds.assign(
        rank=(("prompt",), rank, {"long_name": "rank by score, 1 = most likely memorized"}),
        is_positive=(("prompt",), is_pos, {"long_name": "ground truth: a memorized prompt"}),
        auc=(("comparison",), np.array(aucs), {"long_name": "ROC AUC"}),
        tpr_at_1pct_fpr=(("comparison",), np.array(tprs), {"long_name": "true-positive rate at 1% false-positive rate"}),
    ).assign_coords(comparison=comparisons)
    out_ds.attrs["positive"] = ",".join(positive)
    write_netcdf(out_ds, out)
    import pandas as pd

    table = pd.DataFrame({"prompt": ds.prompt.values, "group": group, "score": score, "rank": rank,
                          "is_positive": is_pos}).sort_values("rank")
    with atomic_file(csv) as tmp:
        table.to_csv(tmp, index=False)
    summary = {c: {"auc": a, "tpr_at_1pct_fpr": t} for c, a, t in zip(comparisons, aucs, tprs)}
    for c, v in summary.items():
        print(f"detection {c}: ROC AUC {v['auc']:.3f}, TPR@1%FPR {v['tpr_at_1pct_fpr']:.3f}")
    return summary


def top_k_prompts(score_files: list[Path], k: int) -> list[str]:
    """The k highest-scoring distinct prompts of the pool, best first (ties: pool order)."""
    from .prompts import InputError

    ds = _concat_scores(score_files)
    prompts = ds.prompt.values.tolist()
    score = ds.score.values
    seen, out = set(), []
    for i in np.argsort(-score, kind="stable"):
        if prompts[i] not in seen:
            seen.add(prompts[i])
            out.append(prompts[i])
        if len(out) == k:
            break
    if len(out) < k:
        raise InputError(f"detection pool holds {len(out)} distinct prompts, fewer than top_k={k}")
    return out
