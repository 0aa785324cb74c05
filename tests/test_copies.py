"""One copy metric, end to end: every stage that decides "this is a copy" (the extraction attack's own / another
image check, the recovery attack's MR, the adversarial surrogate, the evaluation) scores with the configured
similarity (SSCD when a checkpoint is given, SSIM otherwise) at its threshold and names it in its output.

SSCD's real weights are out of reach here: a small conv net saved with `torch.jit` under each published file name
stands in, so loading, preprocessing and scoring run as they would with `sscd_disc_large` or `sscd_disc_mixup`."""

import json

import numpy as np
import pytest
import torch

from memprune.errors import InputError
from memprune.evaluate.copies import CopyMetric, as_metric, same_metric


def _save_standin(path, seed: int = 0):
    class ConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
            self.head = torch.nn.Linear(8 * 16, 32)

        def forward(self, x):
            h = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
            return self.head(h.flatten(1))

    torch.manual_seed(seed)
    torch.jit.script(ConvNet().eval()).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def sscd(tmp_path_factory):
    """{checkpoint name: path} of stand-ins under both published names."""
    root = tmp_path_factory.mktemp("sscd")
    return {name: _save_standin(root / f"{name}.torchscript.pt", seed=i)
            for i, name in enumerate(("sscd_disc_large", "sscd_disc_mixup"))}


@pytest.fixture(scope="module")
def constant_sscd(tmp_path_factory):
    """A stand-in whose every descriptor is the same: every generation copies every image (cosine 1)."""
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 4) + 0 * x.mean()

    path = tmp_path_factory.mktemp("sscd_constant") / "sscd_disc_large.torchscript.pt"
    torch.jit.script(Constant()).save(str(path))
    return str(path)


def _images(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_the_metric_names_itself_and_decides_at_its_threshold(sscd):
    ssim = CopyMetric(0.4)
    assert ssim.attrs() == {"copy_metric": "ssim", "copy_threshold": 0.4, "copy_checkpoint": ""}
    assert ssim.label() == "SSIM >= 0.4"
    assert ssim.copies([0.39, 0.4, np.nan]).tolist() == [False, True, False]
    for name, path in sscd.items():  # both published checkpoints load and score
        m = CopyMetric(0.5, path)
        assert m.attrs() == {"copy_metric": "sscd", "copy_threshold": 0.5, "copy_checkpoint": name}
        imgs = _images(3)
        s = m.similarity(imgs, imgs)
        assert s.shape == (3, 3) and np.allclose(np.diag(s), 1.0, atol=1e-5)
        assert (s[~np.eye(3, dtype=bool)] < 0.999).all()
    assert as_metric(0.3) == CopyMetric(0.3) and as_metric(ssim) is ssim
    with pytest.raises(InputError, match="outside"):
        CopyMetric(1.5)


def test_outputs_scored_with_different_metrics_do_not_mix():
    same = same_metric([CopyMetric(0.5).attrs()] * 2, "here")
    assert same["copy_metric"] == "ssim"
    with pytest.raises(InputError, match="here: rows scored with different copy metrics.*sscd_disc_mixup"):
        same_metric([CopyMetric(0.5, "a/sscd_disc_large.torchscript.pt").attrs(),
                     CopyMetric(0.5, "a/sscd_disc_mixup.torchscript.pt").attrs()], "here")


def test_extraction_scores_and_analyzes_with_sscd(tiny_pipe, sscd, tmp_path):
    from memprune.attacks.extraction import analyze_variant, generate_candidates, which_image
    from memprune.sampling import SamplingConfig

    metric = CopyMetric(0.5, sscd["sscd_disc_large"])
    cfg = SamplingConfig(steps=2, guidance=2.0, batch_size=4)
    refs = [_images(2, seed=5, size=32)]
    got = generate_candidates(tiny_pipe, ["a prompt"], [0, 1, 2], cfg, references=refs, metric=metric)
    np.testing.assert_allclose(got["ssim_truth"][0], metric.similarity(got["images"][0], refs[0]).max(1), atol=1e-6)
    plain = generate_candidates(tiny_pipe, ["a prompt"], [0, 1, 2], cfg, references=refs)
    assert not np.allclose(plain["ssim_truth"], got["ssim_truth"])  # SSIM by default, not SSCD
    # which image a clique copies, by the metric: a gallery holding the generations themselves
    images = got["images"]
    gallery = np.concatenate([refs[0], images[0, :1]])
    res = which_image(images, np.zeros((1, 3, 3)), np.ones((1, 3), bool), np.array([True]), ["a prompt"], gallery,
                      ["x", "y", "a prompt"], metric)
    assert res["nearest_image"][0] == 2 and res["own_image"][0] and res["actually_memorized"][0]

    # a chunk scored with SSIM is not analyzed as SSCD
    import xarray as xr

    chunk = tmp_path / "chunk.nc"
    xr.Dataset({"images": (("prompt", "seed", "y", "x", "rgb"), images),
                "distance": (("prompt", "seed", "seed_j"), np.zeros((1, 3, 3))),
                "ssim_truth": (("prompt", "seed"), plain["ssim_truth"])},
               coords={"prompt": ["a prompt"], "seed": [0, 1, 2], "seed_j": [0, 1, 2], "group": ("prompt", ["g"])},
               attrs={"copy_metric": "ssim", "copy_checkpoint": "", "variant": "none"}
               ).to_netcdf(chunk, engine="h5netcdf")
    with pytest.raises(InputError, match="scored with ssim"):
        analyze_variant([chunk], "none", 0.05, 2, metric, tmp_path / "out.nc")
    out = analyze_variant([chunk], "none", 0.05, 2, 0.4, tmp_path / "out.nc")
    assert out.attrs["copy_metric"] == "ssim" and out.attrs["copy_threshold"] == 0.4


def test_recovery_decides_copies_with_the_metric(tiny_pipe, sscd):
    from memprune import variants
    from memprune.attacks.recovery import RecoverySpec, attack_targets, recovery_dataset

    targets = [{"prompt": "a red square", "group": "g", "image": _images(1, seed=3, size=32)[0], "unrelated": "blue"}]
    spec = RecoverySpec(steps=2, batch_size=2, seeds=[0, 1], sample_steps=2, copy_threshold=0.5)
    metric = CopyMetric(0.5, sscd["sscd_disc_mixup"])
    res = attack_targets(tiny_pipe, variants.get("none"), {}, targets, ["prompt"], spec, ["a", "b", "c"], metric=metric)
    images = res["examples"][0, 0, 1][None]  # the first seed's generation from the found embedding
    assert res["after"][0, 0, 0] == pytest.approx(metric.similarity(images, targets[0]["image"][None])[0, 0], abs=1e-5)
    ds = recovery_dataset("none", targets, ["prompt"], spec, res, {}, metric)
    assert ds.attrs["copy_metric"] == "sscd" and ds.attrs["copy_checkpoint"] == "sscd_disc_mixup"
    assert "SSCD (sscd_disc_mixup) >= 0.5" in ds.recovered.attrs["long_name"]
    assert json.loads(ds.attrs["spec"])["copy_threshold"] == 0.5


def test_the_adversarial_surrogate_is_chosen_by_the_metric(tiny_pipe, constant_sscd):
    from memprune.mitigate.adversarial import AdversarialSpec, surrogates

    targets = [{"prompt": "a red square", "image": _images(1, seed=4, size=32)[0]}]
    spec = AdversarialSpec(surrogate="none", surrogate_seeds=2, surrogate_steps=2, copy_threshold=0.9)
    _, by_ssim = surrogates(tiny_pipe, targets, spec, ["an unrelated caption"])
    assert by_ssim == ["none:seed0"]  # a random model's generation is no SSIM copy of a noise image
    _, by_sscd = surrogates(tiny_pipe, targets, spec, ["an unrelated caption"], CopyMetric(0.9, constant_sscd))
    assert by_sscd == ["unrelated"]  # every seed "copies" under the constant descriptor


def test_the_stacked_leaderboard_refuses_rows_of_different_metrics(tmp_path):
    import pandas as pd

    from memprune.evaluate.leaderboard import stack

    paths = []
    for name, (metric, checkpoint) in {"a": ("ssim", ""), "b": ("sscd", "sscd_disc_large")}.items():
        (tmp_path / name).mkdir()
        path = tmp_path / name / "leaderboard.csv"
        pd.DataFrame([{"model": "none", "copy_metric": metric, "copy_threshold": 0.5,
                       "copy_checkpoint": checkpoint}]).to_csv(path, index=False)
        paths.append(str(path))
    with pytest.raises(InputError, match="different copy metrics"):
        stack(paths, str(tmp_path / "stack.csv"))
    assert not (tmp_path / "stack.csv").exists()
    assert len(stack(paths[:1] * 2, str(tmp_path / "stack.csv"))) == 2
