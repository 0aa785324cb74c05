"""The evaluation's figures: the paper's Figure 3 (copy similarity vs CLIP score; Frechet distance and time) and
Figure 4 (generations of memorized test prompts beside their training image). Colours and names are the
registry's (`Variant.colour`, `Variant.label`), with the method for edited variants (`pruned (wanda)`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from memprune.evaluate.training_images import TrainingImages
from memprune.evaluate.prompts import one_per_subset
from memprune.evaluate.score import Samples

log = logging.getLogger(__name__)


def styles(vids) -> dict[str, tuple[tuple[float, float, float], str]]:
    """{variant id: (colour, legend name)}: the registry's colour and label; the second, third, ... method of
    one variant in lighter shades of its colour."""
    from matplotlib.colors import to_rgb

    from memprune import variants

    out, seen = {}, {}
    for vid in map(str, vids):
        name, _, method = vid.partition(":")
        var = variants.get(name)
        k = seen[name] = seen.get(name, -1) + 1
        rgb = np.array(to_rgb(var.colour))
        out[vid] = (tuple(rgb + (1 - rgb) * min(0.7, 0.45 * k)), var.label + (f" ({method})" if method else ""))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    from memprune.formats.store import atomic_file

    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_copy_vs_clip(ds, path) -> None:
    """The paper's Figure 3 (left): CLIP score vs copy similarity on the memorized test prompts, one point per
    pruned model (and the baselines on that model's test set, small), the means large."""
    plt = _pyplot()
    style = styles(ds.variant.values)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for v in map(str, ds.variant.values):
        colour, name = style[v]
        x = ds.mean_copy_similarity.sel(variant=v).values
        y = ds.clip_score_memorized.sel(variant=v).values
        ax.scatter(x, y, s=14, alpha=0.45, color=colour)
        ax.scatter(np.nanmean(x), np.nanmean(y), s=110, marker="*", color=colour, edgecolor="k", label=name)
    ax.set_xlabel(f"{ds.attrs['copy_metric'].upper()} to the training image (lower: less copying)")
    ax.set_ylabel("CLIP score (higher: closer to the prompt)")
    ax.set_title("Memorized test prompts")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_fid_time(ds, path) -> None:
    """The paper's Figure 3 (right): Frechet distance on non-memorized prompts and wall-clock time on the test
    set per variant (per-subset variants: mean and spread over models; time stacked: sampling + masks)."""
    plt = _pyplot()
    vids = [str(v) for v in ds.variant.values]
    style = styles(vids)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, v in enumerate(vids):
        colour = style[v][0]
        fid = ds.frechet_distance.sel(variant=v).values
        a1.bar(i, np.nanmean(fid), yerr=np.nanstd(fid) if one_per_subset(v) else None, color=colour, capsize=4)
        samp = np.nanmean(ds.sampling_seconds.sel(variant=v).values)
        mask = np.nanmean(ds.mask_seconds.sel(variant=v).values)
        a2.bar(i, samp, color=colour)
        a2.bar(i, mask, bottom=samp, color=colour, alpha=0.4, hatch="//")
    for a in (a1, a2):
        a.set_xticks(range(len(vids)), [style[v][1] for v in vids], fontsize=8, rotation=10)
    a1.set_ylabel("Frechet distance (non-memorized prompts)")
    a1.set_title(ds.attrs["feature_space"], fontsize=9)
    a2.set_ylabel("wall-clock seconds on the test set")
    a2.set_title("hatched: masks (capture share + masks + prune)", fontsize=9)
    _save(fig, path)
    plt.close(fig)


def _short(prompt: str, n: int = 36) -> str:
    return prompt if len(prompt) <= n else prompt[: n - 1].rstrip() + "…"


def plot_grid(ds, models: list[tuple], path, ground_truth: TrainingImages | None = None, n_prompts: int = 2,
              n_models: int = 5) -> None:
    """The paper's Figure 4: for a few memorized prompts in every shown model's test set, one block per prompt:
    its training image, the unedited model, several pruned models (up to `n_models`, shared among methods) and
    the other variants; columns = seeds. `models`: [(ModelEntry, its samples directory)] in the models JSON's
    order."""
    from PIL import Image

    from memprune.grids import image_grid

    vids = [str(v) for v in ds.variant.values]
    per_vid = [v for v in vids if any(m.per_subset and m.vid == v for m, _ in models)]
    quota = max(1, n_models // max(1, len(per_vid)))
    shown = []
    for v in vids:
        shown += [(m, d) for m, d in models if m.vid == v][: quota if v in per_vid else 1]
    labels = list(dict.fromkeys(m.subset for m, _ in shown if m.per_subset))
    mem = np.array([str(g) == "memorized" for g in ds.group.values])
    common = mem & ds.in_test.sel(subset=labels).values.all(axis=0) if labels else mem
    picks = list(np.flatnonzero(common))[:n_prompts] or list(np.flatnonzero(mem))[:n_prompts] or [0]
    seeds = [int(s) for s in ds.seed.values]
    prompts = [str(p) for p in ds.prompt.values]
    samples = [Samples(d).images(picks) for _, d in shown]  # (picked prompt, seed, H, W, 3) each
    h, w = samples[0].shape[2:4]
    style = styles(vids)
    names = [" ".join([m.variant, *([f"({m.method})"] if m.method else []), m.subset]) if m.per_subset
             else style[m.vid][1] for m, _ in shown]
    cells, row_labels = [], []
    for k, pi in enumerate(picks):
        ref = ground_truth.first_image(prompts[pi]) if ground_truth is not None else None
        if ref is not None and ref.shape[:2] != (h, w):
            ref = np.asarray(Image.fromarray(ref).resize((w, h)))
        cells.append([ref] + [None] * (len(seeds) - 1))
        row_labels.append(f"\u201c{_short(prompts[pi])}\u201d\ntraining image"
                          + ("" if ref is not None else " (unknown)"))
        for name, images in zip(names, samples):
            cells.append([images[k, c] for c in range(len(seeds))])
            row_labels.append(name)
    image_grid(cells, row_labels, [f"seed {s}" for s in seeds], path,
               title="Memorized test prompts (in every shown model's test set):\n"
                     "the training image, then each model's generations")
    log.info("grid: prompts %s; rows per prompt: training image, %s", [prompts[i][:40] for i in picks],
             ", ".join(names))
