"""density.nc, iou.nc and their figures from the per-subset mask stores of every collection.

iou.nc has a `mask_type` dimension: `found` (the memorized-neuron masks) and `random` (per subset and
(layer, step), a uniformly random mask with the same number of entries: the chance level of overlap).
The non-memorized control collection is a collection like the others, flagged by the `control` coordinate.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .masks import read_masks
from .overlap import density as packed_density
from .overlap import mean_over_pairs, pairwise_iou, popcount

log = logging.getLogger(__name__)

MASK_TYPES = ("found", "random")


def random_like_packed(packed: np.ndarray, in_features: int, rng: np.random.Generator) -> np.ndarray:
    """A random packed mask with as many set bits as `packed`, per leading index: (..., out, in/8).

    Bits are set straight in the packed layout (a mask is ~1% dense), never as a full boolean array."""
    lead = packed.shape[:-2]
    out_dim, n_bytes = packed.shape[-2:]
    n = out_dim * in_features
    counts = popcount(packed, axis=(-2, -1)).reshape(-1)
    result = np.zeros((counts.size, out_dim * n_bytes), dtype=np.uint8)
    for idx, count in enumerate(counts):
        pos = rng.choice(n, size=int(count), replace=False)
        row, col = np.divmod(pos, in_features)
        np.bitwise_or.at(result[idx], row * n_bytes + (col >> 3), (np.uint8(128) >> (col & 7).astype(np.uint8)).astype(np.uint8))
    return result.reshape(*lead, out_dim, n_bytes)


def layer_overlap(found: list[np.ndarray], found_union: list[np.ndarray], in_features: int,
                  rng: np.random.Generator):
    """One layer of one collection: per-subset packed masks (step, out, in/8) and their tau-unions ->
    densities per subset (step,) and of the unions, and pairwise IOU matrices (n, n, step) and (n, n) of the
    found masks and of random masks with the same number of set bits per step (the control)."""
    size = found[0].shape[-2] * in_features
    rand = [random_like_packed(m, in_features, rng) for m in found]
    rand_u = [random_like_packed(m[None], in_features, rng)[0] for m in found_union]
    return ([packed_density(m, size) for m in found], [packed_density(m, size) for m in found_union],
            [pairwise_iou(found), pairwise_iou(rand)], [pairwise_iou(found_union), pairwise_iou(rand_u)])


def analyze(collections: dict, seed: int, density_path, iou_path, fig_density_path, fig_iou_path,
            jobs: int = 1) -> None:
    """`collections`: {name: {"control": bool, "masks": [mask store per subset]}}. Layers are analysed by
    `jobs` threads; the output does not depend on `jobs`."""
    import xarray as xr

    from . import __version__
    from .store import write_netcdf

    names = list(collections)
    n_max = max(len(c["masks"]) for c in collections.values())
    first = read_masks(collections[names[0]]["masks"][0])
    layers, in_features, _, _, ds0 = first
    steps, t = ds0["step"].values, ds0["t"].values
    L, T = len(layers), len(steps)

    dens = np.full((len(names), n_max, L, T), np.nan)
    dens_union = np.full((len(names), n_max, L), np.nan)
    iou = np.full((len(names), 2, n_max, n_max, L, T), np.nan)
    iou_union = np.full((len(names), 2, n_max, n_max, L), np.nan)
    sizes, attrs = [], {}
    # Threads share the masks without copies: zarr decompression, numpy's bitwise ops and popcounts release the GIL
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for ci, name in enumerate(names):
            paths = collections[name]["masks"]
            stores = [first, *pool.map(read_masks, paths[1:])] if ci == 0 else list(pool.map(read_masks, paths))
            per_subset, union_subset, n_prompts = [], [], []
            for path, (lay, inf, per_step, union, ds) in zip(paths, stores):
                if lay != layers or not np.array_equal(ds["t"].values, t):
                    raise ValueError(f"{path}: layers or timesteps differ from {collections[names[0]]['masks'][0]}")
                per_subset.append(per_step)
                union_subset.append(union)
                n_prompts.append(int(ds.attrs["n_prompts"]))
                attrs = {k: ds.attrs[k] for k in ("sparsity", "tau", "variant", "model", "base_weights_sha256")}
            sizes.append(n_prompts[0] if len(set(n_prompts)) == 1 else -1)
            n = len(per_subset)

            def one_layer(li: int, layer: str):
                # one generator per (collection, layer): the random control does not depend on the job count
                return layer_overlap([m[layer] for m in per_subset], [m[layer] for m in union_subset], in_features[layer],
                                     np.random.default_rng([seed, ci, li]))

            for li, (d, du, pair, pair_u) in enumerate(pool.map(one_layer, range(L), layers)):
                dens[ci, :n, li] = np.stack(d)
                dens_union[ci, :n, li] = du
                for m in range(2):
                    iou[ci, m, :n, :n, li] = pair[m]
                    iou_union[ci, m, :n, :n, li] = pair_u[m]
            log.info("%s: %d subsets, mean density %.4f", name, n, np.nanmean(dens[ci]))

    mean_iou = np.stack([
        np.stack([mean_over_pairs(iou[ci, m, : len(collections[c]["masks"]), : len(collections[c]["masks"])])
                  for m in range(2)]) for ci, c in enumerate(names)
    ])  # (collection, mask_type, layer, step)
    mean_iou_union = np.stack([
        np.stack([mean_over_pairs(iou_union[ci, m, : len(collections[c]["masks"]), : len(collections[c]["masks"])])
                  for m in range(2)]) for ci, c in enumerate(names)
    ])
    coords = {
        "collection": names,
        "control": ("collection", np.array([bool(collections[c]["control"]) for c in names])),
        "subset_size": ("collection", np.array(sizes)),
        "layer": layers,
        "in_features": ("layer", np.array([in_features[l] for l in layers])),
        "step": steps,
        "t": ("step", t),
    }
    common_attrs = {**attrs, "memprune_version": __version__}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN padding rows of smaller collections
        dens_over_layers, dens_over_time = np.nanmean(dens, axis=2), np.nanmean(dens, axis=3)
    density_ds = xr.Dataset(
        {
            "density": (("collection", "subset", "layer", "step"), dens,
                        {"long_name": "fraction of ff.net.2 weights that are memorized neurons (eq. 6)"}),
            "density_union": (("collection", "subset", "layer"), dens_union,
                              {"long_name": "density of the union over the first tau steps (eq. 7)"}),
            "density_over_layers": (("collection", "subset", "step"), dens_over_layers,
                                    {"long_name": "density averaged over layers (Figure 1, over time)"}),
            "density_over_time": (("collection", "subset", "layer"), dens_over_time,
                                  {"long_name": "density averaged over timesteps (Figure 1, over layers)"}),
        },
        coords={**coords, "subset": np.arange(n_max)},
        attrs={**common_attrs, "description": "density of memorized neurons per subset (NaN: no such subset)"},
    )
    iou_ds = xr.Dataset(
        {
            "iou": (("collection", "mask_type", "subset_i", "subset_j", "layer", "step"), iou,
                    {"long_name": "pairwise IOU of per-timestep masks"}),
            "iou_union": (("collection", "mask_type", "subset_i", "subset_j", "layer"), iou_union,
                          {"long_name": "pairwise IOU of the tau-unions"}),
            "mean_iou": (("collection", "mask_type", "layer", "step"), mean_iou,
                         {"long_name": "mean IOU over subset pairs i<j"}),
            "mean_iou_union": (("collection", "mask_type", "layer"), mean_iou_union,
                               {"long_name": "mean IOU of the tau-unions over subset pairs i<j"}),
            "mean_iou_over_layers": (("collection", "mask_type", "step"), mean_iou.mean(axis=2),
                                     {"long_name": "mean pairwise IOU averaged over layers (Figure 2, over time)"}),
            "mean_iou_over_time": (("collection", "mask_type", "layer"), mean_iou.mean(axis=3),
                                   {"long_name": "mean pairwise IOU averaged over timesteps (Figure 2, over layers)"}),
        },
        coords={**coords, "mask_type": list(MASK_TYPES), "subset_i": np.arange(n_max), "subset_j": np.arange(n_max)},
        attrs={**common_attrs, "random_control_seed": seed,
               "description": "pairwise IOU of memorized-neuron masks between subsets of each collection; "
                              "mask_type=random: random masks of equal per-(layer, step) density"},
    )
    write_netcdf(density_ds, density_path)
    write_netcdf(iou_ds, iou_path)
    plot_density(density_ds, fig_density_path)
    plot_iou(iou_ds, fig_iou_path)


def _save_fig(fig, path) -> None:
    from .store import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_density(ds, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for c in ds.collection.values:
        style = "--" if bool(ds.control.sel(collection=c)) else "-"
        over_t = ds.density_over_layers.sel(collection=c)
        axes[0].plot(ds.step, 100 * over_t.mean("subset"), style, label=str(c))
        over_l = ds.density_over_time.sel(collection=c)
        axes[1].plot(np.arange(ds.sizes["layer"]), 100 * over_l.mean("subset"), style + "o", ms=3, label=str(c))
    axes[0].set(xlabel="denoising step", ylabel="density (%)", title="memorized-neuron density, mean over layers")
    axes[1].set(xlabel="layer (execution order)", ylabel="density (%)", title="mean over timesteps")
    axes[1].set_xticks(np.arange(ds.sizes["layer"]))
    axes[1].set_xticklabels([_short(l) for l in ds.layer.values], rotation=60, ha="right", fontsize=7)
    axes[0].legend(fontsize=7)
    _save_fig(fig, path)
    plt.close(fig)


def plot_iou(ds, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for k, c in enumerate(ds.collection.values):
        colour = f"C{k}"
        ctrl = bool(ds.control.sel(collection=c))
        label = f"{c}{' (non-memorized control)' if ctrl else ''}"
        found = ds.mean_iou_over_layers.sel(collection=c, mask_type="found")
        rand = ds.mean_iou_over_layers.sel(collection=c, mask_type="random")
        axes[0].plot(ds.step, found, "--" if ctrl else "-", color=colour, label=label)
        axes[0].plot(ds.step, rand, ":", color=colour, alpha=0.6)
        found_l = ds.mean_iou_over_time.sel(collection=c, mask_type="found")
        rand_l = ds.mean_iou_over_time.sel(collection=c, mask_type="random")
        x = np.arange(ds.sizes["layer"])
        axes[1].plot(x, found_l, ("--" if ctrl else "-") + "o", color=colour, ms=3, label=label)
        axes[1].plot(x, rand_l, ":", color=colour, alpha=0.6)
    axes[0].set(xlabel="denoising step", ylabel="mean pairwise IOU", title="IOU over time (dotted: random masks)", ylim=(0, 1))
    axes[1].set(xlabel="layer (execution order)", ylabel="mean pairwise IOU", title="IOU over layers", ylim=(0, 1))
    axes[1].set_xticks(np.arange(ds.sizes["layer"]))
    axes[1].set_xticklabels([_short(l) for l in ds.layer.values], rotation=60, ha="right", fontsize=7)
    axes[0].legend(fontsize=7)
    _save_fig(fig, path)
    plt.close(fig)


def _short(layer: str) -> str:
    """'up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2' -> 'up1.a2' (and '.t<k>' for k > 0); a name
    outside diffusers' UNet layout is kept as it is."""
    parts = layer.split(".")
    if len(parts) < 4 or "attentions" not in parts[1:4]:
        return layer
    if parts[0] == "mid_block":
        label = f"mid.a{parts[2]}"
        rest = parts[3:]
    else:
        label = f"{parts[0].split('_')[0]}{parts[1]}.a{parts[3]}"
        rest = parts[4:]
    if len(rest) > 1 and rest[0] == "transformer_blocks" and rest[1] != "0":
        label += f".t{rest[1]}"
    return label
