"""`memprune testbed-report`: what the testbed model memorizes, and how well it still generates.

Per guidance scale, over `seeds`:
* duplicated prompts: SSIM of each generation to the prompt's own training image; a prompt "copies" when
  most seeds (> half) give SSIM >= threshold (default 0.4: the dataset keeps every pair of distinct
  training photos below SSIM 0.3, so 0.4 means "closer to one training photo than any two photos are");
* a derived testbed's added prompts (planted or fine-tuned photos, `derived.extend_dataset`): the same, to
  their own photo (`added_*`; NaN on the shipped testbed);
* single-seen prompts: SSIM of each generation to its nearest training photo (duplicated or single); a
  prompt "copies" on the same majority rule: the false-copy rate;
* held-out compositional prompts: a generation copies a training photo when its SSIM to the nearest photo
  reaches the threshold AND exceeds its SSIM to the prompt's own canonical render -- SSIM scores two
  near-uniform images as similar (a dark scene and a dark crop of the Hubble deep field reach ~0.4), so a
  held-out generation counts only if it is closer to a photo than to the scene it was asked for;
* held-out compositional prompts: prompt following = the four attributes read back off the image
  (`scenes.describe_scene`) all match the prompt.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from memprune.testbed.dataset import load_images, read_checked_manifest
from memprune.testbed.derived import GROUPS as ADDED_GROUPS
from memprune.testbed.scenes import SCENE_ATTRIBUTES, attribute_matches, render_scene

log = logging.getLogger(__name__)


def own_photo_ssim(images: np.ndarray, own: np.ndarray) -> np.ndarray:
    """SSIM of generations to their prompt's own training photo: images (P * S, H, W, 3), prompt-major (the
    S seeds of prompt i are images[i * S : (i + 1) * S]), own (P, H, W, 3) -> (P, S)."""
    from memprune.evaluate.metrics import ssim_matrix

    n_p = len(own)
    if n_p == 0 or len(images) % n_p:
        raise ValueError(f"{len(images)} images do not split into {n_p} prompts x seeds")
    per = images.reshape(n_p, len(images) // n_p, *images.shape[1:])
    return np.stack([ssim_matrix(per[i], own[i : i + 1])[:, 0] for i in range(n_p)])


def testbed_report(model: Path, data_dir: Path, out: Path, grid: Path, seeds: list[int], guidances: list[float],
                   threshold: float = 0.4, steps: int = 50, batch_size: int = 128, max_single: int | None = None,
                   device: str = "auto", dtype: str = "auto") -> dict:
    import xarray as xr

    from memprune import __version__
    from memprune.evaluate.metrics import copy_rate, ssim_matrix
    from memprune.models import load_pipeline
    from memprune.sampling import SamplingConfig, generate
    from memprune.formats.store import write_netcdf

    rows = read_checked_manifest(model, data_dir)
    groups = {
        "duplicated": [r for r in rows if r["group"] == "duplicated"],
        "added": [r for r in rows if r["group"] in ADDED_GROUPS],  # a derived testbed's planted / fine-tuned photos
        "single": [r for r in rows if r["group"] == "single"][:max_single],
        "heldout": [r for r in rows if r["group"] == "generalization" and r["split"] == "heldout"],
    }
    # references for "a copy of any training photo": every photo in training, not only the sampled singles
    all_photos = [r for r in rows if r["group"] in ("duplicated", "single", *ADDED_GROUPS)]
    photo_index = {r["caption"]: i for i, r in enumerate(all_photos)}
    photos = load_images(data_dir, all_photos)
    pipe = load_pipeline(model, device, dtype)
    prompts = [r["caption"] for g in groups.values() for r in g]
    group_of = [g for g, rs in groups.items() for _ in rs]
    own_index = np.array([photo_index.get(p, -1) for p in prompts])  # -1: a held-out scene
    n_p, n_s, n_g = len(prompts), len(seeds), len(guidances)
    own = np.full((n_g, n_p, n_s), np.nan)
    nearest = np.full((n_g, n_p, n_s), np.nan)
    nearest_idx = np.full((n_g, n_p, n_s), -1)
    follows = np.zeros((n_g, n_p, n_s), dtype=bool)
    attr_ok = np.zeros((n_g, n_p, n_s, 4), dtype=bool)  # held-out prompts: shape, colour, position, background
    to_render = np.full((n_g, n_p, n_s), np.nan)  # held-out prompts: SSIM to their canonical render
    images_by_g = []
    for gi, g in enumerate(guidances):
        cfg = SamplingConfig(steps=steps, guidance=g, batch_size=batch_size)
        flat_p = [p for p in prompts for _ in seeds]
        flat_s = [s for _ in prompts for s in seeds]
        imgs = generate(pipe, flat_p, flat_s, cfg, progress=True).reshape(n_p, n_s, *photos.shape[1:])
        images_by_g.append(imgs)
        sims = ssim_matrix(imgs.reshape(-1, *photos.shape[1:]), photos).reshape(n_p, n_s, len(photos))
        nearest[gi] = sims.max(-1)
        nearest_idx[gi] = sims.argmax(-1)
        has = own_index >= 0
        own[gi, has] = np.take_along_axis(sims[has], own_index[has][:, None, None], axis=-1)[..., 0]
        attrs = groups["heldout"]
        h0 = n_p - len(attrs)
        if attrs:
            renders = np.stack([render_scene(a) for a in attrs])
            for si in range(n_s):
                attr_ok[gi, h0:, si] = attribute_matches(imgs[h0:, si], attrs)
                follows[gi, h0:, si] = attr_ok[gi, h0:, si].all(-1)
                to_render[gi, h0:, si] = np.diag(ssim_matrix(imgs[h0:, si], renders))
        log.info("guidance %.2f done", g)

    is_dup = np.array([g == "duplicated" for g in group_of])
    is_added = np.array([g == "added" for g in group_of])
    is_single = np.array([g == "single" for g in group_of])
    is_held = np.array([g == "heldout" for g in group_of])
    summary = {k: np.zeros(n_g) for k in ("dup_copy_rate", "dup_mean_ssim", "single_copy_rate", "heldout_copy_rate",
                                           "prompt_following", "dup_nn_recall",
                                           "heldout_copy_rate_ssim_only", "added_copy_rate", "added_mean_ssim",
                                           "added_nn_recall")}
    for gi in range(n_g):
        summary["dup_copy_rate"][gi] = copy_rate(own[gi, is_dup], threshold)
        summary["dup_mean_ssim"][gi] = float(own[gi, is_dup].mean())
        # a derived testbed's added photos (NaN on the shipped testbed): copy rate, and how often the nearest
        # training photo of a generation is the prompt's own
        summary["added_copy_rate"][gi] = copy_rate(own[gi, is_added], threshold) if is_added.any() else np.nan
        summary["added_mean_ssim"][gi] = float(own[gi, is_added].mean()) if is_added.any() else np.nan
        summary["added_nn_recall"][gi] = (float((nearest_idx[gi, is_added] == own_index[is_added][:, None]).mean())
                                          if is_added.any() else np.nan)
        summary["single_copy_rate"][gi] = copy_rate(nearest[gi, is_single], threshold)
        held_copy = np.where(nearest[gi, is_held] > to_render[gi, is_held], nearest[gi, is_held], 0.0)
        summary["heldout_copy_rate"][gi] = copy_rate(held_copy, threshold)
        summary["heldout_copy_rate_ssim_only"][gi] = copy_rate(nearest[gi, is_held], threshold)
        summary["prompt_following"][gi] = float(follows[gi, is_held].mean())
        for ai, key in enumerate(SCENE_ATTRIBUTES):
            summary.setdefault(f"{key}_accuracy", np.zeros(n_g))[gi] = float(attr_ok[gi, is_held, :, ai].mean())
        # nearest-neighbour recall: the nearest training photo is the prompt's own image
        summary["dup_nn_recall"][gi] = float((nearest_idx[gi, is_dup] == own_index[is_dup][:, None]).mean())
    ds = xr.Dataset(
        {
            "ssim_own": (("guidance", "prompt", "seed"), own, {"long_name": "SSIM to the prompt's own training image"}),
            "ssim_nearest": (("guidance", "prompt", "seed"), nearest,
                             {"long_name": "SSIM to the nearest training photo"}),
            "follows_prompt": (("guidance", "prompt", "seed"), follows,
                               {"long_name": "scene attributes all match (held-out prompts)"}),
            "ssim_render": (("guidance", "prompt", "seed"), to_render,
                            {"long_name": "SSIM to the canonical render (held-out prompts)"}),
            **{k: (("guidance",), v) for k, v in summary.items()},
        },
        coords={"guidance": guidances, "prompt": np.array(prompts, dtype=object), "seed": seeds,
                "group": ("prompt", np.array(group_of, dtype=object))},
        attrs={"model": str(model), "copy_threshold": threshold, "steps": steps, "memprune_version": __version__,
               "copy_rule": "a prompt copies when SSIM >= threshold in more than half of its seeds"},
    )
    write_netcdf(ds, out)
    best = int(np.argmax(summary["dup_copy_rate"] - summary["single_copy_rate"]))
    _grid(images_by_g[best], photos, photo_index, groups, prompts, seeds, guidances[best], grid)
    for gi, g in enumerate(guidances):
        log.info("guidance %.1f: " + ", ".join(f"{k} {v[gi]:.3f}" for k, v in summary.items()), g)
        print(f"guidance {g}: " + ", ".join(f"{k}={v[gi]:.3f}" for k, v in summary.items()))
    return {k: v.tolist() for k, v in summary.items()}


def _grid(images: np.ndarray, photos: np.ndarray, photo_index: dict, groups: dict, prompts: list[str],
          seeds: list[int], guidance: float, path: Path) -> None:
    """PNG: rows = 8 duplicated, 4 added (a derived testbed's), 4 single, 4 held-out prompts, each labelled with its
    group and prompt; column 0 = the training image (for held-out prompts: a render of the requested scene), then one
    column per seed."""
    from memprune.grids import image_grid

    cells, labels, start = [], [], 0
    for key, count, name in (("duplicated", 8, "duplicated"), ("added", 4, "added"), ("single", 4, "single-seen"),
                             ("heldout", 4, "held-out scene")):
        rows = groups[key]
        for i, row in enumerate(rows[:count]):
            pi = start + i
            if key == "heldout":
                ref = render_scene(row)
            else:
                ref = photos[photo_index[prompts[pi]]]
            group = row["group"] if key == "added" else name
            cells.append([ref] + [images[pi, c] for c in range(len(seeds))])
            text = prompts[pi] if len(prompts[pi]) <= 34 else prompts[pi][:32] + "..."
            labels.append(f"{group}: \u201c{text}\u201d")
        start += len(rows)
    image_grid(cells, labels, ["training"] + [f"seed {s}" for s in seeds], path,
               title=f"The testbed at guidance {guidance}: its prompts' training images and generations")
