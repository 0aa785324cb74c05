"""The recovery attack (attacks/recovery.py, "Finding Dori"): the search lowers its loss; on the shipped planted
testbed it brings back a planted photo from an embedding that does not produce it, and does not conjure a photo
the model never saw."""

from pathlib import Path

import numpy as np
import torch

import pytest

from conftest import denoising_loss
from memprune.attacks import recovery

REPO = Path(__file__).resolve().parents[1]
PLANTED = REPO / "resources" / "testbed_planted"


def test_search_lowers_its_own_loss(tiny_pipe):
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    image = image[:size, :size] if size <= 32 else np.resize(image, (size, size, 3))
    z0 = recovery.image_latent(tiny_pipe, image)
    start = recovery.embed(tiny_pipe, ["a photo"])
    spec = recovery.RecoverySpec(steps=30, batch_size=4)
    tiny_pipe.unet.requires_grad_(False)
    with torch.enable_grad():
        y, losses = recovery.search(tiny_pipe.unet, tiny_pipe.scheduler, z0, start, spec,
                                    torch.Generator().manual_seed(0))
    assert losses.shape == (30,) and np.isfinite(losses).all()
    assert (denoising_loss(tiny_pipe.unet, tiny_pipe.scheduler, z0, y)
            < denoising_loss(tiny_pipe.unet, tiny_pipe.scheduler, z0, start))


def test_a_shorter_search_is_the_longer_ones_first_steps(tiny_pipe):
    """What `on_step` sees after k steps is the k-step search's embedding: one search measures several budgets
    (benchmarks/recovery_calibration.py)."""
    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    image = (np.random.default_rng(2).random((size, size, 3)) * 255).astype(np.uint8)
    z0, start = recovery.image_latent(tiny_pipe, image), recovery.embed(tiny_pipe, ["a photo"])
    tiny_pipe.unet.requires_grad_(False)
    kept = {}
    with torch.enable_grad():
        recovery.search(tiny_pipe.unet, tiny_pipe.scheduler, z0, start, recovery.RecoverySpec(steps=5, batch_size=2),
                        torch.Generator().manual_seed(0), on_step=lambda k, y: kept.update({k: y.clone()}))
        short, _ = recovery.search(tiny_pipe.unet, tiny_pipe.scheduler, z0, start,
                                   recovery.RecoverySpec(steps=3, batch_size=2), torch.Generator().manual_seed(0))
    assert sorted(kept) == [1, 2, 3, 4, 5]
    torch.testing.assert_close(kept[3], short, rtol=0, atol=0)
    assert not torch.equal(kept[5], short)


def test_calibration_counts_each_control_and_start_once():
    """The calibration table (benchmarks/recovery_calibration.py): a (control, start) is recovered when at least
    min_seeds seeds reach the threshold; the pooled row counts every (control, start) once."""
    import xarray as xr

    from benchmarks.recovery_calibration import rates

    ssim = np.zeros((1, 2, 3, 2, 4))  # lr, budget (0, 50), control, start, seed
    ssim[0, 1, 0, 0] = [0.5, 0.5, 0.5, 0.1]  # single 0 from its prompt: 3 of 4 seeds
    ssim[0, 1, 1, 1] = [0.5, 0.5, 0.5, 0.5]  # single 1 from random: 4 of 4
    ds = xr.Dataset({"ssim": (("lr", "budget", "target", "init", "seed"), ssim)},
                    coords={"lr": [0.1], "budget": [0, 50], "target": [0, 1, 2], "init": ["prompt", "random"],
                            "group": ("target", ["single", "single", "never_seen"]), "seed": [0, 1, 2, 3]})
    rows = {(r["steps"], r["min_seeds"], r["kind"], r["start"]): (r["k"], r["n"])
            for r in rates(ds, [0.4], [3, 4])}
    assert rows[50, 3, "single", "prompt"] == (1, 2) and rows[50, 4, "single", "prompt"] == (0, 2)
    assert rows[50, 3, "all", "all"] == (2, 6) and rows[50, 4, "all", "all"] == (1, 6)
    assert rows[50, 3, "never_seen", "all"] == (0, 2) and rows[0, 3, "all", "all"] == (0, 6)


@pytest.mark.slow  # 13 s of searches on the planted testbed
def test_recovers_a_planted_photo_but_not_one_never_seen():
    from memprune.models import load_pipeline
    from memprune.testbed.planted import planted_images, read_planted_units
    from memprune.variants import get

    torch.manual_seed(0)
    truth = read_planted_units(PLANTED)
    photos = planted_images(PLANTED, truth)
    pipe = load_pipeline(PLANTED, "cpu", "float32")
    never_seen = np.ascontiguousarray(photos[1][::-1, :, ::-1])  # upside down, channels swapped: not a training photo
    unrelated = "a red circle at the left on a white background"
    targets = [{"prompt": truth["prompts"][0], "group": "planted", "image": photos[0], "unrelated": unrelated},
               {"prompt": truth["prompts"][1], "group": "never_seen", "image": never_seen, "unrelated": unrelated}]
    spec = recovery.RecoverySpec(seeds=[0, 1, 2])
    res = recovery.attack_targets(pipe, get("none"), {}, targets, ["unrelated"], spec, [unrelated, truth["prompts"][2]])
    before, after = res["before"][:, 0], res["after"][:, 0]
    # the unrelated prompt does not produce the planted photo; the embedding found from it does
    assert not recovery.copied(before[0], spec.copy_threshold) and recovery.copied(after[0], spec.copy_threshold)
    # the same budget does not produce a photo the model never saw
    assert not recovery.copied(after[1], spec.copy_threshold)
    ds = recovery.recovery_dataset("none", targets, ["unrelated"], spec, res, {})
    assert ds.recovered.values.tolist() == [[1], [0]] and ds.loss.shape == (2, 1, spec.steps)


def test_copied_needs_most_seeds():
    sim = np.array([[0.5, 0.5, 0.1], [0.5, 0.1, 0.1], [0.5, 0.5, 0.5, 0.1][:3]])
    assert recovery.copied(sim, 0.4).tolist() == [True, False, True]


def test_wen_reuses_the_unedited_searches_exactly(tiny_pipe, tmp_path):
    """Wen's job takes the unedited model's searches from its recovery file: the same result as running them."""
    from memprune.errors import InputError
    from memprune.formats.store import write_netcdf
    from memprune.variants import get

    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    image = (np.random.default_rng(1).random((size, size, 3)) * 255).astype(np.uint8)
    targets = [{"prompt": "a photo of a cat", "group": "memorized", "image": image, "unrelated": "a red square"}]
    inits, spec = ["prompt", "random"], recovery.RecoverySpec(steps=4, batch_size=2, seeds=[0, 1], sample_steps=3)
    refs = ["a photo of a cat", "a red square", "a dog"]
    plain = recovery.attack_targets(tiny_pipe, get("none"), {}, targets, inits, spec, refs)
    path = tmp_path / "none.nc"
    write_netcdf(recovery.recovery_dataset("none", targets, inits, spec, plain,
                                           {"checkpoint": "", "variant_name": "none"}), path)
    params = {"max_iters": 2}
    fresh = recovery.attack_targets(tiny_pipe, get("wen"), params, targets, inits, spec, refs)
    reused = recovery.attack_targets(tiny_pipe, get("wen"), params, targets, inits, spec, refs,
                                     searches=recovery.read_searches(path, targets, inits, spec))
    for key in ("embedding", "loss", "before", "after"):
        np.testing.assert_array_equal(reused[key], fresh[key], err_msg=key)
    np.testing.assert_array_equal(reused["embedding"], plain["embedding"])
    with pytest.raises(InputError, match="none.nc.*its steps is 4, not 5"):
        recovery.read_searches(path, targets, inits, recovery.RecoverySpec(steps=5, batch_size=2))
    with pytest.raises(InputError, match="none.nc.*its starts"):
        recovery.read_searches(path, targets, ["prompt"], spec)


def test_targets_are_said_apart_by_the_edits_subset():
    groups = {"planted": ["p0", "p1", "p2", "p3"], "memorized": ["m0", "m1"]}
    targets = ([{"prompt": p, "group": g} for g, ps in groups.items() for p in ps]
               + [{"prompt": "new", "group": "never_seen"}])
    assert recovery.split_of(targets, groups, None) == ["all"] * 7
    assert recovery.split_of(targets, groups, {"planted": [1, 3]}) == ["heldout", "subset", "heldout", "subset",
                                                                      "heldout", "heldout", "heldout"]


def test_the_plan_measures_each_edit_on_its_own_subset_and_on_held_out_photos():
    """Recovery targets of a set an edit was drawn from: the first max_targets of the subset's prompts and the first
    max_targets of the others; each edited model's job names its own subset, the unedited model's none."""
    from test_plan import load

    from memprune.plan.compare import Recovery
    from memprune.plan.config import Plan

    cfg = load("config.yaml")
    rec = Recovery(Plan(cfg, REPO))
    n = cfg["recovery"]["max_targets"]
    subset = sorted(Plan(cfg, REPO).collections["plant_k10"].subsets[0])
    chosen = rec.chosen()
    assert chosen["planted"] == subset[:n] + [i for i in range(25) if i not in subset][:n]
    assert chosen["memorized"] == list(range(n)) and chosen["single"] == list(range(n))
    pruned = next(m for m in rec.models if m.method == "oracle")
    assert rec.subset_of(pruned) == {"planted": [int(i) for i in Plan(cfg, REPO).collections["plant_k10"].subsets[0]]}
    assert rec.subset_of(rec.models[0]) is None and rec.subset_args(rec.models[0]) == ""
    assert rec.subset_args(pruned).startswith("--subset-json '{\"planted\": [")
    assert rec.targets_args().startswith("--targets-json '{")


def test_recovery_table_rows_split_subset_and_held_out(tmp_path):
    """recovery-table: an edited model's rows per group are its subset's targets and the held-out ones apart, a model
    without an edit has one row per group ("all"); the counts and MR are those of the targets in each row."""
    from memprune.attacks.recovery_report import summary
    from memprune.formats.store import write_netcdf

    spec = recovery.RecoverySpec(steps=2, seeds=[0, 1, 2])
    image = np.zeros((4, 4, 3), np.uint8)
    targets = [{"prompt": f"p{i}", "group": "planted", "image": image} for i in range(4)]
    files = []
    for name, split, after in [("none", ["all"] * 4, [0.9, 0.9, 0.1, 0.1]),
                               ("pruned", ["subset", "subset", "heldout", "heldout"], [0.1, 0.1, 0.9, 0.1])]:
        res = {"before": np.full((4, 1, 3), 0.9), "after": np.repeat(np.array(after)[:, None, None], 3, 2),
               "loss": np.zeros((4, 1, 2)), "seconds": np.ones((4, 1)),
               "examples": np.zeros((4, 1, 2, 4, 4, 3), np.uint8),
               "embedding": np.zeros((4, 1, 2, 3, 5), np.float32)}
        ds = recovery.recovery_dataset(name, targets, ["prompt"], spec, res, {})
        ds["split"] = ("target", np.array(split, dtype=object))
        files.append(tmp_path / f"{name}.nc")
        write_netcdf(ds, files[-1])
    ds, rows = summary(files)
    got = {(r["variant"], r["split"]): (r["targets"], r["mr_recovered"]) for r in rows}
    assert got == {("none", "all"): (4, 0.5), ("pruned", "subset"): (2, 0.0), ("pruned", "heldout"): (2, 0.5)}
    assert ds.split.dims == ("variant", "target")
    # intervals: Wilson over the row's targets, the difference from the unedited model paired on the same targets
    by = {(r["variant"], r["split"]): r for r in rows}
    assert by[("none", "all")]["mr_recovered_lo"] < 0.5 < by[("none", "all")]["mr_recovered_hi"]
    assert by[("pruned", "subset")]["mr_recovered_lo"] == 0 and by[("pruned", "subset")]["mr_recovered_hi"] > 0.5
    none = by[("none", "all")]
    assert (none["mr_recovered_minus_none"], none["mr_recovered_minus_none_lo"],
            none["mr_recovered_minus_none_hi"]) == (0, 0, 0)
    assert none["mr_recovered_minus_none_excludes_zero"] is False
    subset = by[("pruned", "subset")]  # targets p0, p1: the unedited model recovers both, the edit neither
    assert subset["mr_recovered_minus_none"] == -1 and subset["mr_recovered_minus_none_excludes_zero"] is True
    assert list(rows[0])[list(rows[0]).index("mr_recovered") + 1] == "mr_recovered_lo"
    assert "Wilson" in rows[0]["interval_method"] and "paired" in ds.attrs["interval_method"]
    # recovery.nc holds the table as variables, intervals included
    assert ds.summary_mr_recovered_hi.dims == ("summary_row",)
    assert list(ds.summary_split.values) == ["all", "subset", "heldout"]
    np.testing.assert_array_equal(ds.summary_mr_recovered.values, [0.5, 0.0, 0.5])


@pytest.mark.slow
def test_a_model_attacked_in_chunks_merges_into_the_one_job_file(tiny_model, tmp_path):
    """The recovery attack cut into jobs (config `chunks.recovery`): each chunk skips the draws of the targets
    before it, so the merged chunks equal one job over every target (random starts included), the searches'
    seconds apart; a run past the last target writes an empty chunk that the merge skips. Wen's chunks reuse the
    unedited chunks' searches and merge as its one job does."""
    import xarray as xr

    from memprune.attacks.recovery import RecoverySpec, run_variant
    from memprune.attacks.recovery_chunks import merge
    from memprune.random_model import write_stand_in_images

    prompts = tmp_path / "mem.txt"
    prompts.write_text("".join(f"a photo of thing {i}\n" for i in range(5)))
    root = write_stand_in_images(prompts, tmp_path / "images", size=32)
    spec = RecoverySpec(steps=2, batch_size=2, seeds=[0, 1], sample_steps=2)
    common = dict(params={}, data_dir=None, groups={"mem": [f"a photo of thing {i}" for i in range(5)]},
                  inits=["prompt", "random"], spec=spec, max_targets=None, device="cpu", dtype="float32",
                  images={"mem": (str(root), str(prompts))}, chosen={"mem": [0, 1, 2, 3, 4]})
    files = {}
    for variant in ("none", "wen"):
        one = tmp_path / f"{variant}.nc"
        reuse = {"searches_from": str(tmp_path / "none.nc")} if variant == "wen" else {}
        run_variant(str(tiny_model), variant, None, out=one, variant_id=variant, **reuse, **common)
        chunks = []
        for k in range(4):  # 2 + 2 + 1 targets, and a run past the last
            chunks.append(tmp_path / variant / f"chunk{k}.nc")
            reuse = {"searches_from": str(tmp_path / "none" / f"chunk{k}.nc")} if variant == "wen" else {}
            run_variant(str(tiny_model), variant, None, out=chunks[-1], variant_id=variant, chunk=(k, 2), **reuse,
                        **common)
        assert merge(chunks, tmp_path / f"{variant}_merged.nc") == 5
        files[variant] = one, tmp_path / f"{variant}_merged.nc"
    for variant, (one, merged) in files.items():
        a, b = xr.load_dataset(one), xr.load_dataset(merged)
        xr.testing.assert_identical(a.drop_vars("seconds"), b.drop_vars("seconds"))
    assert xr.load_dataset(tmp_path / "wen_merged.nc").attrs["searches_from"] == str(tmp_path / "none.nc")


def test_searches_batched_into_one_call_are_the_one_at_a_time_searches(tiny_pipe):
    """`recovery.searches_per_call` (attacks/recovery_batch.py): each (target, start) search keeps its own draws,
    so the embeddings and losses are those of the searches run one at a time, to rounding, random starts
    included, over calls of unequal size and in a chunk that skips the draws of the targets before it."""
    from memprune.variants import get

    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    rng = np.random.default_rng(4)
    targets = [{"prompt": p, "group": "memorized", "image": (rng.random((size, size, 3)) * 255).astype(np.uint8),
                "unrelated": "a dog"} for p in ("a photo of a cat", "a red square")]
    inits, spec = ["prompt", "random"], recovery.RecoverySpec(steps=4, batch_size=2, seeds=[0, 1], sample_steps=2)
    refs = ["a photo of a cat", "a red square", "a dog"]
    one = recovery.attack_targets(tiny_pipe, get("none"), {}, targets, inits, spec, refs)
    many = recovery.attack_targets(tiny_pipe, get("none"), {}, targets, inits, spec, refs, per_call=3)
    chunk = recovery.attack_targets(tiny_pipe, get("none"), {}, targets[1:], inits, spec, refs, skip=1, per_call=3)
    # rounding in the larger batch moves Adam's near-zero-gradient entries by up to ~2e-3 here (measured); other
    # draws (another seed) move the embeddings by ~2 and the loss by ~0.1
    for key, atol in (("embedding", 1e-2), ("loss", 1e-5)):
        np.testing.assert_allclose(many[key], one[key], rtol=0, atol=atol, err_msg=key)
        np.testing.assert_allclose(chunk[key], one[key][1:], rtol=0, atol=atol, err_msg=key)
    moved = np.abs(one["embedding"][:, :, 1] - one["embedding"][:, :, 0]).max()
    assert moved > 0.2  # the searches moved the embeddings far beyond the tolerance
    np.testing.assert_allclose(many["after"], one["after"], rtol=0, atol=1e-3)
    assert np.isfinite(many["seconds"]).all()
