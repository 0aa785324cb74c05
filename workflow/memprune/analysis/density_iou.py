"""density.nc, iou.nc and their figures from the per-subset mask stores of every (method, collection).

Both carry a `localizer` dimension: every method of config `localizers` side by side on the same collections
(not named `method`: that is a keyword of xarray's `.sel`, so `.sel(method="wanda")` would not select). iou.nc
has a `mask_type` dimension: `found` (the memorized-neuron masks) and `random` (per subset and
(layer, step), a uniformly random mask with the same number of entries: the chance level of overlap).
The non-memorized control collection is a collection like the others, flagged by the `control` coordinate.
"""

from __future__ import annotations

import json
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from memprune.formats.masks import read_mask_set
from memprune.analysis.overlap import density as packed_density
from memprune.analysis.overlap import iou_matrix, mean_over_pairs, pair_intersections, pairwise_iou, popcount

log = logging.getLogger(__name__)

MASK_TYPES = ("found", "random")


def _random_positions(packed: np.ndarray, in_features: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per leading index of `packed` (..., out, in/8), the bit positions (in the packed layout) of a uniformly
    random mask with as many set bits: the draws of `random_like_packed`, in its order."""
    out_dim, n_bytes = packed.shape[-2:]
    n = out_dim * in_features
    positions = []
    for count in popcount(packed, axis=(-2, -1)).reshape(-1):
        pos = rng.choice(n, size=int(count), replace=False)
        if in_features % 8:  # rows end inside a byte
            row, col = np.divmod(pos, in_features)
            pos = row * (n_bytes * 8) + col
        positions.append(pos)
    return positions


def _set_bits(flat: np.ndarray, pos: np.ndarray) -> None:
    # the positions are distinct, so adding a byte's bits or-s them (np.add.at has a fast path that
    # np.bitwise_or.at lacks: ~5x, measured)
    np.add.at(flat, pos >> 3, np.uint8(128) >> (pos & 7).astype(np.uint8))


def random_like_packed(packed: np.ndarray, in_features: int, rng: np.random.Generator) -> np.ndarray:
    """A random packed mask with as many set bits as `packed`, per leading index: (..., out, in/8).

    Bits are set straight in the packed layout (a mask is ~1% dense), never as a full boolean array."""
    positions = _random_positions(packed, in_features, rng)
    result = np.zeros((len(positions), packed.shape[-2] * packed.shape[-1]), dtype=np.uint8)
    for idx, pos in enumerate(positions):
        _set_bits(result[idx], pos)
    return result.reshape(packed.shape)


def random_pairwise_iou(found: list[np.ndarray], in_features: int, rng: np.random.Generator) -> np.ndarray:
    """`pairwise_iou([random_like_packed(m, in_features, rng) for m in found])` (the same draws), without holding
    the random masks: each timestep's are built in one reused buffer (for SD1.5's largest layer, 10 subsets'
    masks over 51 steps would be 420 MB)."""
    positions = [_random_positions(m, in_features, rng) for m in found]
    n, steps = len(found), len(positions[0])
    sizes = np.array([[p.size for p in ps] for ps in positions]).reshape(n, *found[0].shape[:-2])
    buf = np.zeros((n, found[0].shape[-2] * found[0].shape[-1]), dtype=np.uint8)
    inter = np.zeros((n, n, steps), dtype=np.int64)
    for k in range(steps):
        buf[...] = 0
        for i in range(n):
            _set_bits(buf[i], positions[i][k])
        inter[:, :, k] = pair_intersections(list(buf))
    return iou_matrix(inter.reshape(n, n, *found[0].shape[:-2]), sizes)


def layer_overlap(found: list[np.ndarray], found_union: list[np.ndarray], in_features: int,
                  rng: np.random.Generator):
    """One layer of one collection: per-subset packed masks (step, out, in/8) and their tau-unions ->
    densities per subset (step,) and of the unions, and pairwise IOU matrices (n, n, step) and (n, n) of the
    found masks and of random masks with the same number of set bits per step (the control)."""
    size = found[0].shape[-2] * in_features
    rand = random_pairwise_iou(found, in_features, rng)
    rand_u = [random_like_packed(m[None], in_features, rng)[0] for m in found_union]
    return ([packed_density(m, size) for m in found], [packed_density(m, size) for m in found_union],
            [pairwise_iou(found), rand], [pairwise_iou(found_union), pairwise_iou(rand_u)])


def _collection_overlap(stores: list, paths: list, layers: list[str], steps: np.ndarray, t: np.ndarray,
                        seed: int, ci: int, pool):
    """Densities and IOU matrices of one (method, collection): arrays (n, L, T), (n, L), (2, n, n, L, T),
    (2, n, n, L). Masks without timesteps count as the same mask at every step."""
    for path, ms in zip(paths, stores):
        if ms.layers != layers or (ms.t is not None and not np.array_equal(ms.t, t)):
            raise ValueError(f"{path}: layers or timesteps differ from the other mask stores")
    n, L, T = len(stores), len(layers), len(steps)

    def per_step(ms, layer):
        return ms.per_step[layer] if ms.per_step is not None else np.broadcast_to(ms.union[layer],
                                                                                  (T, *ms.union[layer].shape))

    def one_layer(li: int, layer: str):
        # one generator per (collection, layer), the same for every method: the random control does not depend
        # on the job count, and the paper's method keeps the numbers it had before methods were compared
        cols = stores[0].grid[layer][1]
        return layer_overlap([np.ascontiguousarray(per_step(ms, layer)) for ms in stores],
                             [ms.union[layer] for ms in stores],
                             cols, np.random.default_rng([seed, ci, li]))

    dens, dens_u = np.zeros((n, L, T)), np.zeros((n, L))
    iou, iou_u = np.zeros((2, n, n, L, T)), np.zeros((2, n, n, L))
    for li, (d, du, pair, pair_u) in enumerate(pool.map(one_layer, range(L), layers)):
        dens[:, li], dens_u[:, li] = np.stack(d), du
        for m in range(2):
            iou[m, :, :, li], iou_u[m, :, :, li] = pair[m], pair_u[m]
    return dens, dens_u, iou, iou_u


def analyze(methods: dict, seed: int, density_path, iou_path, fig_density_path, fig_iou_path, jobs: int = 1) -> None:
    """`methods`: {method: {collection: {"control": bool, "masks": [mask store per subset]}}}, every method over
    the same collections. Layers are analysed by `jobs` threads; the output does not depend on `jobs`."""
    import xarray as xr

    from memprune import __version__
    from memprune.formats.store import write_netcdf

    method_names = list(methods)
    names = list(methods[method_names[0]])
    if any(list(methods[m]) != names for m in method_names):
        raise ValueError("analyze: every method must cover the same collections")
    n_max = max(len(c["masks"]) for c in methods[method_names[0]].values())
    sizes = {c: len(methods[method_names[0]][c]["masks"]) for c in names}
    layers, grid, method_layers = [], {}, {}  # the union of the methods' layers, in order of appearance
    steps = t = None  # the timesteps of the first method with per-timestep masks, whatever its place in the list
    for method in method_names:
        first = read_mask_set(methods[method][names[0]]["masks"][0])
        if first.steps is not None:
            steps, t = first.steps, first.t
            break
    if steps is None:
        raise ValueError(f"analyze: none of the localizers {method_names} has per-timestep masks (e.g. wanda): "
                         "the IOU over time needs one")
    attrs, n_prompts = {}, {}
    # Threads share the masks without copies: zarr decompression, numpy's bitwise ops and popcounts release the GIL
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = {}
        for mi, method in enumerate(method_names):
            for ci, name in enumerate(names):
                paths = methods[method][name]["masks"]
                stores = list(pool.map(read_mask_set, paths))
                own = method_layers.setdefault(mi, list(stores[0].layers))
                for layer in own:
                    if layer not in grid:
                        layers.append(layer)
                        grid[layer] = stores[0].grid[layer]
                results[mi, ci] = _collection_overlap(stores, paths, own, steps, t, seed, ci, pool)
                n_prompts.setdefault(name, {int(ms.attrs.get("n_prompts", -1)) for ms in stores})
                attrs.setdefault(method, {k: stores[0].attrs[k] for k in ("params", "model", "base_unet_sha256")
                                          if k in stores[0].attrs})
                log.info("%s %s: %d subsets, mean density %.4f", method, name, len(stores), results[mi, ci][0].mean())
    M, C, L, T = len(method_names), len(names), len(layers), len(steps)
    dens = np.full((M, C, n_max, L, T), np.nan)
    dens_union = np.full((M, C, n_max, L), np.nan)
    iou = np.full((M, C, 2, n_max, n_max, L, T), np.nan)
    iou_union = np.full((M, C, 2, n_max, n_max, L), np.nan)
    for (mi, ci), (d, du, pair, pair_u) in results.items():
        n, at = d.shape[0], [layers.index(l) for l in method_layers[mi]]  # a method's layers; NaN on the others'
        dens[mi, ci, :n, at], dens_union[mi, ci, :n, at] = np.moveaxis(d, 1, 0), du.T
        iou[mi, ci, :, :n, :n, at] = np.moveaxis(pair, 3, 0)
        iou_union[mi, ci, :, :n, :n, at] = np.moveaxis(pair_u, 3, 0)
    # (method, collection, mask_type, layer, step)
    mean_iou = np.stack([np.stack([np.stack([mean_over_pairs(iou[mi, ci, m, : sizes[c], : sizes[c]]) for m in range(2)])
                                   for ci, c in enumerate(names)]) for mi in range(M)])
    mean_iou_union = np.stack([np.stack([np.stack([mean_over_pairs(iou_union[mi, ci, m, : sizes[c], : sizes[c]])
                                                   for m in range(2)])
                                         for ci, c in enumerate(names)]) for mi in range(M)])
    control = [bool(methods[method_names[0]][c]["control"]) for c in names]
    coords = {
        "localizer": method_names,
        "collection": names,
        "control": ("collection", np.array(control)),
        "subset_size": ("collection",
                        np.array([next(iter(n_prompts[c])) if len(n_prompts[c]) == 1 else -1 for c in names])),
        "layer": layers,
        "in_features": ("layer", np.array([grid[l][1] for l in layers])),
        "step": steps,
        "t": ("step", t),
    }
    common_attrs = {"memprune_version": __version__, "method_params": json.dumps(attrs, default=str)}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN padding rows of smaller collections
        dens_over_layers, dens_over_time = np.nanmean(dens, axis=3), np.nanmean(dens, axis=4)
    mc = ("localizer", "collection")
    density_ds = xr.Dataset(
        {
            "density": ((*mc, "subset", "layer", "step"), dens,
                        {"long_name": "fraction of the layer's weights in the mask (Wanda: memorized neurons, eq. 6)"}),
            "density_union": ((*mc, "subset", "layer"), dens_union,
                              {"long_name": "density of the mask an edit applies (Wanda: the union over the first tau "
                                            "steps, eq. 7)"}),
            "density_over_layers": ((*mc, "subset", "step"), dens_over_layers,
                                    {"long_name": "density averaged over layers (Figure 1, over time)"}),
            "density_over_time": ((*mc, "subset", "layer"), dens_over_time,
                                  {"long_name": "density averaged over timesteps (Figure 1, over layers)"}),
        },
        coords={**coords, "subset": np.arange(n_max)},
        attrs={**common_attrs, "description": "density of each method's masks per subset (NaN: no such subset)"},
    )
    mct = (*mc, "mask_type")
    iou_ds = xr.Dataset(
        {
            "iou": ((*mct, "subset_i", "subset_j", "layer", "step"), iou,
                    {"long_name": "pairwise IOU of per-timestep masks"}),
            "iou_union": ((*mct, "subset_i", "subset_j", "layer"), iou_union,
                          {"long_name": "pairwise IOU of the applied masks (tau-unions)"}),
            "mean_iou": ((*mct, "layer", "step"), mean_iou, {"long_name": "mean IOU over subset pairs i<j"}),
            "mean_iou_union": ((*mct, "layer"), mean_iou_union,
                               {"long_name": "mean IOU of the tau-unions over subset pairs i<j"}),
            "mean_iou_over_layers": ((*mct, "step"), np.nanmean(mean_iou, axis=3),
                                     {"long_name": "mean pairwise IOU averaged over layers (Figure 2, over time)"}),
            "mean_iou_over_time": ((*mct, "layer"), np.nanmean(mean_iou, axis=4),
                                   {"long_name": "mean pairwise IOU averaged over timesteps (Figure 2, over layers)"}),
        },
        coords={**coords, "mask_type": list(MASK_TYPES), "subset_i": np.arange(n_max), "subset_j": np.arange(n_max)},
        attrs={**common_attrs, "random_control_seed": seed,
               "description": "pairwise IOU of each method's masks between subsets of each collection; "
                              "mask_type=random: random masks of equal per-(layer, step) density"},
    )
    write_netcdf(density_ds, density_path)
    write_netcdf(iou_ds, iou_path)
    plot_density(density_ds, fig_density_path)
    plot_iou(iou_ds, fig_iou_path)


def _save_fig(fig, path) -> None:
    from memprune.formats.store import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _own_layers(var, method: str) -> np.ndarray:
    """Indices of the layers where `method` has masks: `var` (a variable with `localizer` and `layer` dimensions,
    e.g. `iou_union`) is NaN throughout on the layers of the other methods only."""
    own = var.sel(localizer=method).notnull()
    return np.flatnonzero(own.any([d for d in own.dims if d != "layer"]).values)


def _layer_axis(ax, layers) -> None:
    ax.set_xticks(np.arange(len(layers)))
    ax.set_xticklabels([_short(str(l)) for l in layers], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(layers) - 0.5)


def plot_density(ds, path) -> None:
    """Figure 1 per method (one row each): density over time (mean over layers) and over layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [str(m) for m in ds.localizer.values]
    fig, axes = plt.subplots(len(methods), 2, figsize=(11, 3.4 * len(methods)), squeeze=False)
    for row, method in zip(axes, methods):
        own = _own_layers(ds.density_union, method)
        for c in ds.collection.values:
            style = "--" if bool(ds.control.sel(collection=c)) else "-"
            over_t = ds.density_over_layers.sel(localizer=method, collection=c)
            row[0].plot(ds.step, 100 * over_t.mean("subset"), style, label=str(c))
            over_l = ds.density_over_time.sel(localizer=method, collection=c).isel(layer=own)
            row[1].plot(np.arange(own.size), 100 * over_l.mean("subset"), style + "o", ms=3, label=str(c))
        row[0].set(xlabel="denoising step", ylabel="density (%)", title=f"{method}: mask density, mean over layers")
        row[1].set(xlabel="layer (execution order)", ylabel="density (%)", title=f"{method}: mean over timesteps")
        _layer_axis(row[1], ds.layer.values[own])
        row[0].legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_iou(ds, path):
    """Figure 2 per method (one row each): mean pairwise IOU over time and over layers, dotted: random masks.
    Each method's layer axis holds only its own layers (those where it has masks). Returns the (closed) Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [str(m) for m in ds.localizer.values]
    fig, axes = plt.subplots(len(methods), 2, figsize=(11, 3.4 * len(methods)), squeeze=False)
    for row, method in zip(axes, methods):
        own = _own_layers(ds.iou_union, method)
        x = np.arange(own.size)
        for k, c in enumerate(ds.collection.values):
            colour, ctrl = f"C{k}", bool(ds.control.sel(collection=c))
            label = f"{c}{' (non-memorized control)' if ctrl else ''}"
            sel = dict(localizer=method, collection=c)
            row[0].plot(ds.step, ds.mean_iou_over_layers.sel(**sel, mask_type="found"), "--" if ctrl else "-",
                        color=colour, label=label)
            row[0].plot(ds.step, ds.mean_iou_over_layers.sel(**sel, mask_type="random"), ":", color=colour, alpha=0.6)
            over_l = ds.mean_iou_over_time.sel(**sel).isel(layer=own)
            row[1].plot(x, over_l.sel(mask_type="found"), ("--" if ctrl else "-") + "o", color=colour, ms=3,
                        label=label)
            row[1].plot(x, over_l.sel(mask_type="random"), ":", color=colour, alpha=0.6)
        row[0].set(xlabel="denoising step", ylabel="mean pairwise IOU", ylim=(0, 1.02),
                   title=f"{method}: IOU over time (dotted: random masks)")
        row[1].set(xlabel="layer (execution order)", ylabel="mean pairwise IOU", ylim=(0, 1.02),
                   title=f"{method}: IOU over layers")
        _layer_axis(row[1], ds.layer.values[own])
        row[0].legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return fig


def _short(layer: str) -> str:
    """'up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2' -> 'up1.a2.ff' ('.t<k>' after the block for
    transformer block k > 0; the layer within the block, e.g. 'attn2.to_v', in full except 'ff.net.2' -> 'ff'),
    so that the FFN and the cross-attention value layer of one block read apart; a name outside diffusers' UNet
    layout is kept as it is."""
    parts = layer.split(".")
    if len(parts) < 4 or "attentions" not in parts[1:4]:
        return layer
    if parts[0] == "mid_block":
        label = f"mid.a{parts[2]}"
        rest = parts[3:]
    else:
        label = f"{parts[0].split('_')[0]}{parts[1]}.a{parts[3]}"
        rest = parts[4:]
    if len(rest) > 1 and rest[0] == "transformer_blocks":
        if rest[1] != "0":
            label += f".t{rest[1]}"
        rest = rest[2:]
    kind = ".".join(rest)
    return f"{label}.{'ff' if kind == 'ff.net.2' else kind}" if kind else label
