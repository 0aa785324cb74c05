"""Memorization detection (Wen et al., ICLR 2024): a memorized prompt's text steers the denoiser hard, so the
text-conditional part of its prediction is large. score(prompt) = mean over seeds and over the first
`score_steps` DDIM steps of ||eps(x_t, c) - eps(x_t, null)||_2 (norm over the latent's channels and pixels),
along the CFG trajectory the pipeline itself would follow. eps is the noise prediction whatever the model predicts
(`memprune.prediction.to_epsilon`: SD2 at 768 px predicts v). Reported as ROC AUC and TPR at 1% FPR against the
ground truth; the top k scored prompts of a pool are the closed loop's detected set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def detection_scores(pipe, prompts: list[str], seeds: list[int], steps: int = 50, score_steps: int = 1,
                     guidance: float = 2.0, batch_size: int = 64, progress: bool = False, height: int | None = None,
                     width: int | None = None) -> np.ndarray:
    """Wen et al.'s score per (prompt, seed): (P, S) float64, the mean over the first `score_steps` denoising
    steps of ||eps(x_t, c) - eps(x_t, null)||_2, x_t following the CFG trajectory (`guidance`) from the
    seed's initial latent (drawn exactly as `sampling.generate` draws it, for `height` x `width` pixels; None:
    the model's resolution)."""
    import torch
    from tqdm.auto import tqdm

    from memprune.prediction import to_epsilon
    from memprune.sampling import SamplingConfig, _initial_latents

    if not 1 <= score_steps <= steps:
        raise ValueError(f"score_steps must be in [1, steps={steps}], got {score_steps}")
    unet, device = pipe.unet, pipe.unet.device
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # leave the pipeline's own untouched
    cfg = SamplingConfig(steps=steps, guidance=guidance, batch_size=batch_size, height=height, width=width)
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
                out_uncond, out_cond = unet(x_in, t, encoder_hidden_states=text).sample.chunk(2)
                eps_uncond, eps_cond = to_epsilon(torch.cat([out_uncond, out_cond]), x_in, t, scheduler).chunk(2)
                total += (eps_cond - eps_uncond).flatten(1).norm(dim=1).double()
                guided = out_uncond + guidance * (out_cond - out_uncond)  # the model's own output, as the pipeline
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
                     dtype: str = "auto", scheduler: str | None = None, height: int | None = None,
                     width: int | None = None) -> None:
    """Wen et al.'s score of every prompt of one prompt set (group `name`) on the unedited model, at `height` x
    `width` pixels (None: the model's resolution); netCDF."""
    import xarray as xr

    from memprune import __version__
    from memprune.models import load_pipeline
    from memprune.formats.store import write_netcdf

    pipe = load_pipeline(model, device, dtype, scheduler)
    s = detection_scores(pipe, prompts, seeds, steps, score_steps, guidance, batch_size, progress=True,
                         height=height, width=width)
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


def detection_report(score_files: list[Path], positive: list[str], out: Path, csv: Path) -> dict:
    """ROC AUC and TPR at 1% FPR of positives (groups named in `positive`) against each other group and
    against all of them; netCDF with the scores, CSV of scores ranked."""
    import pandas as pd

    from memprune.attacks.table_intervals import auc_intervals
    from memprune.formats.store import atomic_file, open_netcdfs, write_netcdf

    ds = open_netcdfs(score_files)
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
        tpr_at_1pct_fpr=(("comparison",), np.array(tprs),
                         {"long_name": "true-positive rate at 1% false-positive rate"}),
    ).assign_coords(comparison=comparisons)
    out_ds.attrs["positive"] = ",".join(positive)
    out_ds = auc_intervals(out_ds)
    write_netcdf(out_ds, out)
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
    from memprune.errors import InputError
    from memprune.formats.store import open_netcdfs

    ds = open_netcdfs(score_files)
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
