import numpy as np
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from memprune.analysis.density_iou import random_like_packed
from memprune.analysis.overlap import density, iou, mean_over_pairs, pairwise_iou


def pack(m):
    return np.packbits(np.asarray(m, dtype=bool), axis=-1)


def test_density_and_iou_on_known_masks():
    a = pack([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    b = pack([[0, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    assert density(a, 10) == 0.2
    assert iou(a, b) == 1 / 3
    assert iou(a, a) == 1.0
    empty = pack([[0] * 10])
    assert iou(empty, empty) == 1.0 and iou(a, empty) == 0.0


def test_mean_over_pairs_leaves_out_the_diagonal():
    m = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert np.isclose(mean_over_pairs(m), 0.4)


def test_random_like_keeps_counts_per_leading_index():
    rng = np.random.default_rng(0)
    m = pack(rng.random((3, 5, 20)) < 0.3)
    r = random_like_packed(m, 20, rng)
    assert np.array_equal(np.bitwise_count(r).sum(axis=(1, 2)), np.bitwise_count(m).sum(axis=(1, 2)))
    # padding bits of the last byte stay clear
    assert not np.unpackbits(r, axis=-1)[..., 20:].any()


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, (4, 3, 2, 13)))
def test_pairwise_iou_symmetric_and_one_on_identical(masks):
    packed = [pack(m) for m in masks]
    mat = pairwise_iou(packed)
    assert np.allclose(mat, np.swapaxes(mat, 0, 1))
    assert np.all(mat[np.arange(4), np.arange(4)] == 1.0)
    assert np.all((mat >= 0) & (mat <= 1))
    assert np.allclose(pairwise_iou([packed[0], packed[0]])[0, 1], 1.0)


def _mask_store(path, rng, layers=(("a", 6, 20), ("b", 4, 16)), steps=5, with_steps=True):
    from memprune.formats.masks import MaskSet, write_mask_set

    per_step, union = {}, {}
    for name, out_f, in_f in layers:
        per_step[name] = np.packbits(rng.random((steps, out_f, in_f)) < 0.2, axis=-1)
        union[name] = np.bitwise_or.reduce(per_step[name][:3], axis=0)
    ms = MaskSet(layers=[n for n, _, _ in layers], kinds={n: "weight" for n, _, _ in layers},
                 grid={n: (o, i) for n, o, i in layers}, union=union, per_step=per_step if with_steps else None,
                 steps=np.arange(steps) if with_steps else None, t=np.arange(steps)[::-1] * 100 if with_steps else None,
                 attrs={"n_prompts": 3, "params": {"sparsity": 0.2}, "model": "m", "base_unet_sha256": "x"})
    write_mask_set(ms, path)
    return path


def test_analysis_does_not_depend_on_the_number_of_threads(tmp_path):
    import xarray as xr

    from memprune.analysis.density_iou import analyze

    rng = np.random.default_rng(0)
    collections = {"mem": {"control": False,
                           "masks": [str(_mask_store(tmp_path / f"m{i}.zarr", rng)) for i in range(3)]},
                   "ctl": {"control": True,
                           "masks": [str(_mask_store(tmp_path / f"c{i}.zarr", rng)) for i in range(2)]}}
    # a second method without timesteps (as the magnitude control): its one mask counts at every step
    flat = {"mem": {"control": False,
                    "masks": [str(_mask_store(tmp_path / f"fm{i}.zarr", rng, with_steps=False)) for i in range(3)]},
            "ctl": {"control": True,
                    "masks": [str(_mask_store(tmp_path / f"fc{i}.zarr", rng, with_steps=False)) for i in range(2)]}}
    out = {}
    for jobs in (1, 3):
        d = tmp_path / f"jobs{jobs}"
        analyze({"first": collections, "flat": flat}, 7, d / "density.nc", d / "iou.nc", d / "density.png",
                d / "iou.png", jobs=jobs)
        out[jobs] = [xr.load_dataset(d / f, engine="h5netcdf") for f in ("density.nc", "iou.nc")]
    for a, b in zip(out[1], out[3]):
        xr.testing.assert_identical(a, b)
    # the method without timesteps listed first: the same numbers, in the listed order
    d = tmp_path / "flat_first"
    analyze({"flat": flat, "first": collections}, 7, d / "density.nc", d / "iou.nc", d / "density.png", d / "iou.png")
    swapped = xr.load_dataset(d / "iou.nc", engine="h5netcdf")
    assert list(swapped.localizer.values) == ["flat", "first"]
    xr.testing.assert_equal(swapped.sel(localizer="first"), out[1][1].sel(localizer="first"))  # attrs in list order
    iou = out[1][1]
    # the found masks of a collection: known pairwise IOU; the random control keeps each mask's density
    found = iou["iou"].sel(localizer="first", collection="mem", mask_type="found").isel(subset_i=0, subset_j=1,
                                                                                        layer=0).values
    masks = [xr.open_zarr(p)["a"].values for p in collections["mem"]["masks"][:2]]
    inter = np.bitwise_count(masks[0] & masks[1]).sum(axis=(1, 2))
    union = np.bitwise_count(masks[0] | masks[1]).sum(axis=(1, 2))
    assert np.allclose(found, inter / union)
    assert np.isnan(iou["iou"].sel(collection="ctl").isel(subset_i=2).values).all()  # padding of the smaller one
    flat_iou = iou["iou"].sel(localizer="flat", collection="mem", mask_type="found").isel(subset_i=0, subset_j=1).values
    assert np.allclose(flat_iou, flat_iou[:, :1])  # the same at every step
    unions = [xr.open_zarr(p)["a.union"].values for p in flat["mem"]["masks"][:2]]
    assert np.isclose(flat_iou[0, 0],
                      np.bitwise_count(unions[0] & unions[1]).sum() / np.bitwise_count(unions[0] | unions[1]).sum())


def test_iou_figure_shows_each_localizer_only_its_own_layers(tmp_path):
    import xarray as xr

    from memprune.analysis.density_iou import plot_iou

    block = "transformer_blocks.0"
    ff = [f"down_blocks.0.attentions.0.{block}.ff.net.2", f"down_blocks.0.attentions.1.{block}.ff.net.2",
          "up_blocks.1.attentions.0.transformer_blocks.1.ff.net.2"]
    to_v = [f"down_blocks.0.attentions.0.{block}.attn2.to_v", f"mid_block.attentions.0.{block}.attn2.to_v"]
    layers = [ff[0], to_v[0], ff[1], to_v[1], ff[2]]  # interleaved, as the union of two methods' layers
    own = {"wanda": ff, "nemo": to_v}
    n, steps, rng = 3, 4, np.random.default_rng(0)
    iou_union = np.full((2, 2, 2, n, n, len(layers)), np.nan)
    over_time = np.full((2, 2, 2, len(layers)), np.nan)
    for mi, method in enumerate(own):
        at = [layers.index(l) for l in own[method]]
        iou_union[mi, ..., at] = rng.uniform(size=(len(at), 2, 2, n, n))
        over_time[mi, ..., at] = rng.uniform(size=(len(at), 2, 2))
    iou_union[:, 1, :, 0, :] = np.nan  # a collection where no pair has an IOU still keeps the method's layers
    dims = ("localizer", "collection", "mask_type")
    ds = xr.Dataset({"iou_union": ((*dims, "subset_i", "subset_j", "layer"), iou_union),
                     "mean_iou_over_time": ((*dims, "layer"), over_time),
                     "mean_iou_over_layers": ((*dims, "step"), rng.uniform(size=(2, 2, 2, steps)))},
                    coords={"localizer": list(own), "collection": ["mem", "ctl"],
                            "control": ("collection", [False, True]), "mask_type": ["found", "random"],
                            "layer": layers, "step": np.arange(steps)})
    fig = plot_iou(ds, tmp_path / "iou.png")
    assert (tmp_path / "iou.png").stat().st_size > 1000
    expected = {"wanda": ["down0.a0.ff", "down0.a1.ff", "up1.a0.t1.ff"],
                "nemo": ["down0.a0.attn2.to_v", "mid.a0.attn2.to_v"]}
    over_layers = fig.axes[1::2]
    for ax, method in zip(over_layers, own):
        assert ax.get_title().startswith(method)
        assert [t.get_text() for t in ax.get_xticklabels()] == expected[method]
        assert all(len(line.get_xdata()) == len(own[method]) for line in ax.get_lines())
        found = ax.get_lines()[0].get_ydata()  # the first collection's found masks: the method's own values
        assert np.allclose(found, over_time[list(own).index(method), 0, 0, [layers.index(l) for l in own[method]]])
    labels = [t.get_text() for ax in over_layers for t in ax.get_xticklabels()]
    assert len(set(labels)) == len(labels) == len(layers)
