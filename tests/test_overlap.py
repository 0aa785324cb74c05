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
