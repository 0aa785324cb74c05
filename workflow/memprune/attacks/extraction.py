"""Extraction attack (Carlini et al., USENIX Security 2023), as the paper's section 5.4 runs it:
  1. generate N images per candidate prompt, each from its own seed, with one model variant (`memprune.variants`);
  2. distance between two images = Carlini's tiled L2 (`metrics.tiled_l2`: each image cut into grid x grid
     tiles, per-tile RMS difference of pixels in [0, 1], maximum over tiles);
  3. graph of the N images, an edge where two images are closer than `distance_threshold`; the prompt is
     "identified as memorized" when the graph's largest clique has at least `min_clique` images;
  4. which image: the clique's nearest training image, over every train-split image of the dataset (not only
     the prompt's own): the one most similar (SSIM) to the clique's medoid (its member with the least summed
     distance to the others). An identified prompt is "actually memorized" only when that image is one of the
     prompt's own training images and the median SSIM of the clique's images to it reaches `copy_threshold`;
     when it is another caption's image at that similarity, the prompt "copies another training image",
     counted apart. Without the dataset the nearest image is unknown: the prompt's own images (read through
     `memprune.evaluate.training_images.TrainingImages`) decide as before, with their median SSIM
     ("clique_ssim", max over the caption's images).
Steps 1-2 (the costly part) are stored per chunk of prompts with the SSIM to the training images, so changing
a threshold reruns only the cheap steps 3-4.

Threshold on the testbed (32x32 images, grid 4 = 8x8-pixel tiles, pixels in [0, 1]): the paper's 50.0 is on
its own scale (512 px SD images), not ours. Measured on the shipped testbed (12 seeds x 10 prompts per group,
DDIM 10/20/50 steps, guidance 2): generations of a duplicated prompt lie 0.008-0.02 apart (10th-90th
percentile of pairs), single-seen prompts' generations 0.14-0.58, and no two of the 250 distinct training
photos are closer than 0.095 (1% of pairs below 0.15). The default 0.05 sits between the two: two images
closer than that are near-copies of each other, and cannot be two different training photos.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from memprune.errors import InputError

if TYPE_CHECKING:  # imported where used: importing this module stays light
    import pandas as pd
    import xarray as xr

log = logging.getLogger(__name__)


def pairwise_tiled_distances(images: np.ndarray, grid: int = 4) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, N) float32 tiled L2 between every pair, symmetric, zero diagonal."""
    from memprune.evaluate.metrics import tiled_l2

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


def resolve_variant(variant, params: dict | None = None):
    """(Variant, its parameters): `variant` a registry name or a `Variant`; `params` over its defaults."""
    from memprune import variants

    v = variants.get(variant) if isinstance(variant, str) else variant
    return v, {**v.default_params, **(params or {})}


def generate_candidates(pipe, prompts: list[str], seeds: list[int], cfg, grid: int = 4,
                        references: list[np.ndarray | None] | None = None, progress: bool = False,
                        variant="none", params: dict | None = None, metric=None) -> dict:
    """Steps 1-2 of the attack for a chunk of prompts on a loaded `pipe`: every prompt x seed image, generated
    the way `variant` (a registry name or a `Variant`; `params` over its defaults) generates, pairwise tiled
    distances per prompt, and each image's copy similarity (`metric`, an `evaluate.copies.CopyMetric`; None: SSIM)
    to the prompt's training images (max over them; NaN without references).

    Returns {"images": (P, S, H, W, 3) uint8, "distance": (P, S, S) float32, "ssim_truth": (P, S) float32,
    "info": what the variant recorded, per-image arrays as (P, S), scalars as they are}.
    """
    from memprune.evaluate.copies import CopyMetric

    metric = metric if metric is not None else CopyMetric(0.0)
    v, params = resolve_variant(variant, params)
    n_p, n_s = len(prompts), len(seeds)
    flat_p = [p for p in prompts for _ in seeds]
    flat_s = [s for _ in prompts for s in seeds]
    images, info = v.generate(pipe, flat_p, flat_s, cfg, params, progress=progress)
    images = images.reshape(n_p, n_s, *images.shape[1:])
    info = {k: np.asarray(x).reshape(n_p, n_s) if np.ndim(x) == 1 and len(x) == n_p * n_s else x
            for k, x in info.items()}
    distance = (np.stack([pairwise_tiled_distances(images[i], grid) for i in range(n_p)]) if n_p
                else np.zeros((0, n_s, n_s), np.float32))
    ssim_truth = np.full((n_p, n_s), np.nan, dtype=np.float32)
    for i, refs in enumerate(references or [None] * n_p):
        if refs is not None and len(refs):
            ssim_truth[i] = metric.similarity(images[i], refs).max(axis=1)
    return {"images": images, "distance": distance, "ssim_truth": ssim_truth, "info": info}


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


def attack_chunk(model: str, prompts: list[str], group: str, seeds: list[int], cfg, out: Path, grid: int = 4,
                 data_dir: Path | None = None, variant: str = "none", checkpoint: str | None = None,
                 params: dict | None = None, device: str = "auto", dtype: str = "auto", scheduler: str | None = None,
                 attrs: dict | None = None, sscd: str | None = None) -> None:
    """Generate and measure one chunk of prompts (steps 1-2) with a registry variant (`variant`, loaded with
    `checkpoint` where it needs one, generating with `params` over its defaults); netCDF, its attrs recording
    the variant, checkpoint and params, its variables what the variant recorded per image. `data_dir`: the
    testbed dataset whose train-split images are the prompts' ground truth (`evaluate.training_images`); `sscd`:
    the SSCD checkpoint that scores the generations against them (None: SSIM)."""
    import xarray as xr

    from memprune import __version__
    from memprune.evaluate.copies import CopyMetric
    from memprune.evaluate.training_images import TrainingImages
    from memprune.formats.store import write_netcdf

    v, params = resolve_variant(variant, params)
    # "actually memorized" needs the photos the model was trained on: TrainingImages refuses another testbed's data
    truth = TrainingImages(data_dir, model=model) if data_dir is not None else None
    pipe = v.load(model, checkpoint, device, dtype, scheduler)
    refs = truth.references(prompts) if truth is not None else None
    metric = CopyMetric(0.0, sscd, str(pipe.unet.device))  # the similarity only: analyze_variant applies the threshold
    res = generate_candidates(pipe, prompts, seeds, cfg, grid, refs, progress=True, variant=v, params=params,
                              metric=metric)
    per_image = {k: x for k, x in res["info"].items() if np.shape(x) == (len(prompts), len(seeds))}
    scalars = {f"variant_{k}": x for k, x in res["info"].items() if k not in per_image}
    ds = xr.Dataset(
        {
            "images": (("prompt", "seed", "y", "x", "rgb"), res["images"]),
            "distance": (("prompt", "seed", "seed_j"), res["distance"],
                         {"long_name": "Carlini's tiled L2 between the prompt's generations", "tile_grid": grid}),
            "ssim_truth": (("prompt", "seed"), res["ssim_truth"],
                           {"long_name": f"{metric.name.upper()} to the prompt's training image (max over them); NaN: "
                                         "none known"}),
            **{k: (("prompt", "seed"), x, {"long_name": f"recorded by variant {v.name} per image"})
               for k, x in per_image.items()},
        },
        coords={"prompt": np.array(prompts, dtype=object), "seed": seeds, "seed_j": seeds,
                "group": ("prompt", np.array([group] * len(prompts), dtype=object))},
        attrs={"model": str(model), "variant": v.name, "checkpoint": str(checkpoint or ""),
               "variant_params": json.dumps(params, sort_keys=True), "steps": cfg.steps, "guidance": cfg.guidance,
               "tile_grid": grid, "scheduler": type(pipe.scheduler).__name__, "memprune_version": __version__,
               "copy_metric": metric.name, "copy_checkpoint": metric.checkpoint,
               **scalars, **(attrs or {})},
    )
    write_netcdf(ds, out, encoding={"images": {"zlib": True, "complevel": 4}})


def training_gallery(data_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Every train-split image of the testbed dataset `data_dir` (R, H, W, 3) uint8, and each one's caption."""
    from memprune.evaluate.training_images import TrainingImages, _load

    rows = [r for r in TrainingImages(data=data_dir).rows if r.get("split", "train") == "train"]
    return _load([Path(data_dir) / r["image"] for r in rows]), [r["caption"] for r in rows]


def medoid(distance: np.ndarray, members: np.ndarray) -> int:
    """The member (index into the S images) with the least summed distance to the other members."""
    idx = np.flatnonzero(members)
    return int(idx[np.argmin(distance[np.ix_(idx, idx)].sum(1))])


def which_image(images: np.ndarray, distance: np.ndarray, clique: np.ndarray, identified: np.ndarray,
                prompts: list[str], gallery: np.ndarray, captions: list[str], copy) -> dict:
    """Step 4 over every training image: per prompt (images (P, S, H, W, 3), distance (P, S, S), clique (P, S),
    identified (P,)) the clique's nearest image of `gallery` (R, H, W, 3) with its `captions` (R,), by the copy
    metric `copy` (an `evaluate.copies.CopyMetric`, or a bare threshold: SSIM).

    Returns "nearest_image" (P,) gallery index (-1: not identified), "nearest_caption" (P,) its caption (""),
    "nearest_ssim" (P,) median similarity of the clique's images to it (NaN), "own_image" (P,) bool it is one of
    the prompt's own, "actually_memorized" (P,) identified, own and nearest_ssim >= the threshold,
    "copies_another" (P,) identified, another caption's image and nearest_ssim >= the threshold."""
    from memprune.evaluate.copies import as_metric

    metric = as_metric(copy)

    n_p = len(prompts)
    nearest, near_ssim = np.full(n_p, -1), np.full(n_p, np.nan)
    for i in np.flatnonzero(identified):
        rep = images[i, medoid(distance[i], clique[i])]
        nearest[i] = int(np.argmax(metric.similarity(rep[None], gallery)[0]))
        near_ssim[i] = float(np.median(metric.similarity(images[i][clique[i]], gallery[nearest[i]][None])[:, 0]))
    caption = np.array([captions[k] if k >= 0 else "" for k in nearest], dtype=object)
    own = (nearest >= 0) & (caption == np.array(prompts, dtype=object))
    copies = metric.copies(near_ssim)
    return {"nearest_image": nearest, "nearest_caption": caption, "nearest_ssim": near_ssim, "own_image": own,
            "actually_memorized": identified & own & copies,
            "copies_another": identified & (nearest >= 0) & ~own & copies}


def analyze_variant(chunks: list[Path], variant: str, threshold: float, min_clique: int, copy,
                    out: Path, data_dir: Path | None = None) -> "xr.Dataset":
    """Steps 3-4 over a variant's chunks -> per-prompt results (netCDF, without the images). `variant` is the
    variant's id in tables and figures (free-form, e.g. "pruned:wanda|mem_k10/0"); the registry name the chunks
    were generated with stays in attrs "variant_name". `data_dir`: the testbed dataset whose train-split images
    the cliques are matched against (`which_image`); without it "copies_another" is unknown (NaN in the table).
    `copy`: the copy metric (`evaluate.copies.CopyMetric`, or a bare threshold: SSIM); the chunks must have been
    scored with the same similarity."""
    import xarray as xr

    from memprune.evaluate.copies import as_metric

    from memprune.formats.store import open_netcdfs, write_netcdf

    ds = open_netcdfs(chunks, drop=[] if data_dir is not None else ["images"])
    metric = as_metric(copy)
    scored = ds.attrs.get("copy_metric", "ssim"), ds.attrs.get("copy_checkpoint", "")
    if scored != (metric.name, metric.checkpoint):
        raise InputError(f"{chunks[0]}: its generations were scored with {scored[0]} {scored[1]}, not "
                         f"{metric.name} {metric.checkpoint}: rerun the attack's generation")
    copy_threshold, label = metric.threshold, metric.label()
    res = identify(ds.distance.values, ds.ssim_truth.values, threshold, min_clique, copy_threshold)
    which = {}
    if data_dir is not None:
        gallery, captions = training_gallery(Path(data_dir))
        which = which_image(ds.images.values, ds.distance.values, res["clique"], res["identified"],
                            [str(p) for p in ds.prompt.values], gallery, captions, metric)
        res["actually_memorized"] = which.pop("actually_memorized")
        ds = ds.drop_vars("images")
    d = ds.distance.values
    n_s = d.shape[-1]
    off = ~np.eye(n_s, dtype=bool)
    median_pair = np.array([np.median(d[i][off]) for i in range(len(d))]) if n_s > 1 else np.full(len(d), np.nan)
    out_ds = xr.Dataset(
        {
            "clique_size": (("prompt",), res["clique_size"], {"long_name": "size of the largest clique"}),
            "identified": (("prompt",), res["identified"],
                           {"long_name": f"identified as memorized: clique >= {min_clique}"}),
            "actually_memorized": (("prompt",), res["actually_memorized"],
                                   {"long_name": ("identified, the clique's nearest training image is the prompt's "
                                                  f"own and its median {label}"
                                                  if which else f"identified and the clique's median {label} to the "
                                                                "training image")}),
            **({"copies_another": (("prompt",), which["copies_another"],
                                   {"long_name": "identified, the clique's nearest training image is another "
                                                 f"caption's, median {label}"}),
                "own_image": (("prompt",), which["own_image"],
                              {"long_name": "the clique's nearest training image is one of the prompt's own"}),
                "nearest_image": (("prompt",), which["nearest_image"],
                                  {"long_name": "row of the clique's nearest image among the dataset's train-split "
                                                "images (-1: not identified)"}),
                "nearest_caption": (("prompt",), which["nearest_caption"],
                                    {"long_name": "caption of the clique's nearest training image"}),
                "nearest_ssim": (("prompt",), which["nearest_ssim"],
                                 {"long_name": "median SSIM of the clique's images to its nearest training image"}),
                } if which else {}),
            "clique_ssim": (("prompt",), res["clique_ssim"],
                            {"long_name": "median SSIM of the clique's images to the training image"}),
            "has_truth": (("prompt",), res["has_truth"], {"long_name": "the prompt's training image is known"}),
            "clique": (("prompt", "seed"), res["clique"], {"long_name": "member of the largest clique"}),
            "median_pair_distance": (("prompt",), median_pair),
            "ssim_truth": ds.ssim_truth,
        },
        coords={"prompt": ds.prompt.values, "seed": ds.seed.values, "group": ("prompt", ds.group.values)},
        attrs={**ds.attrs, "variant_name": ds.attrs.get("variant", ""), "variant": variant,
               "distance_threshold": threshold, "min_clique": min_clique, **metric.attrs()},
    )
    write_netcdf(out_ds, out)
    log.info("%s: %d of %d prompts identified, %d actually memorized, %s copy another training image", variant,
             int(res["identified"].sum()), len(d), int(res["actually_memorized"].sum()),
             int(which["copies_another"].sum()) if which else "unknown")
    return out_ds


def attack_table(variant_files: list[Path]) -> "pd.DataFrame":
    """Table 1 in long form: per (variant, group): prompts, identified, actually memorized (the prompt's own
    training image), copies another training image (counts and %; None where unknown)."""
    import pandas as pd
    import xarray as xr

    from memprune.attacks.table_intervals import attack_table_intervals

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
            other = int(ds.copies_another.values[sel].sum()) if "copies_another" in ds else None
            rows.append({"variant": ds.attrs["variant"], "group": g, "prompts": n,
                         "identified": ident, "identified_pct": round(100 * ident / n, 1),
                         "actually_memorized": actual,
                         "actually_memorized_pct": round(100 * actual / n, 1) if actual is not None else None,
                         "copies_another": other,
                         "copies_another_pct": round(100 * other / n, 1) if other is not None else None})
        ds.close()
    return attack_table_intervals(pd.DataFrame(rows))


def format_table(table: "pd.DataFrame") -> str:
    """The paper's Table 1 layout: rows identified / actually memorized (/ copies another training image),
    columns variant / group."""
    import pandas as pd

    def cell(count, n, pct):
        return "n/a" if pd.isna(count) else f"{int(count)}/{n} ({pct:.0f}%)"

    rows = list(table.itertuples())
    head = ["", *[f"{r.variant} / {r.group}" for r in rows]]
    body = [["identified as memorized", *[cell(r.identified, r.prompts, r.identified_pct) for r in rows]],
            ["actually memorized", *[cell(r.actually_memorized, r.prompts, r.actually_memorized_pct) for r in rows]]]
    if "copies_another" in table:
        body.append(["copies another training image",
                     *[cell(r.copies_another, r.prompts, r.copies_another_pct) for r in rows]])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def attack_figure(variant_files: list[Path], chunk_files: dict[str, list[Path]], data_dir: Path | None, out: Path,
                  n_prompts: int = 6, n_seeds: int = 6) -> None:
    """PNG (`grids.image_grid`): per variant, the first `n_prompts` prompts of its first chunk, one row each
    (labelled variant id, prompt and clique size), the training image (with `data_dir`) then the first
    `n_seeds` seeds."""
    import xarray as xr

    from memprune.evaluate.training_images import TrainingImages
    from memprune.grids import image_grid

    truth = TrainingImages(data_dir) if data_dir is not None else None
    cells, row_labels, col_seeds = [], [], []
    for f in variant_files:
        res = xr.open_dataset(f, engine="h5netcdf").load()
        variant = res.attrs["variant"]
        with xr.open_dataset(chunk_files[variant][0], engine="h5netcdf") as chunk:
            imgs = chunk.images.values[:n_prompts, :n_seeds]
        prompts = res.prompt.values[: len(imgs)].tolist()
        seeds = res.seed.values[: imgs.shape[1]].tolist()
        col_seeds.append(seeds)
        for r, prompt in enumerate(prompts):
            clique = res.clique.values[r]
            short = prompt if len(prompt) <= 40 else prompt[:37] + "..."
            row_labels.append(f"{variant}: {short}\nclique {int(clique.sum())}/{len(clique)}")
            refs = [truth.first_image(prompt, split="train")] if truth is not None else []
            cells.append([*refs, *imgs[r]])
    if not cells:
        raise ValueError("attack_figure: no prompts to show")
    if all(s == col_seeds[0] for s in col_seeds):
        col_labels = [f"seed {s}" for s in col_seeds[0]]
    else:  # variants attacked with other seeds: columns are positions
        col_labels = [f"sample {i}" for i in range(max(map(len, col_seeds)))]
    image_grid(cells, row_labels, ["training image", *col_labels] if truth is not None else col_labels, out,
               title="Extraction attack: generations per variant and prompt"
                     + (", beside the training image" if truth is not None else ""))
