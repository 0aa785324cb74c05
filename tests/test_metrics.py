"""Metrics: copy similarity (SSIM, SSCD stand-in), CLIP score, Frechet distance, copy rate."""

from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from memprune.evaluate.metrics import (
    ClipScorer,
    CopySimilarity,
    SsimReferences,
    clip_score,
    cosine_matrix,
    frechet_distance,
    ssim_matrix,
)
from memprune.errors import InputError

SHIPPED_CLIP = REPO / "resources" / "testbed_clip"


def _photos(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random images (as unrelated as two photos), (n, 32, 32, 3) uint8."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=(n, 32, 32, 3)), sigma=(0, 2, 2, 0))
    x = (x - x.min()) / (x.max() - x.min())
    return (x * 255).astype(np.uint8)


def test_ssim_identical_is_one_and_unrelated_low():
    imgs = _photos(4)
    s = ssim_matrix(imgs, imgs)
    assert np.allclose(np.diag(s), 1.0)
    off = s[~np.eye(4, dtype=bool)]
    assert off.max() < 0.4


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    a, b = _photos(2, seed=3)
    ref = structural_similarity(a, b, channel_axis=-1, data_range=255)
    assert ssim_matrix(a[None], b[None])[0, 0] == pytest.approx(ref, abs=1e-6)


def test_ssim_against_references_grown_one_at_a_time_is_bit_identical():
    gen, refs = _photos(3, seed=4), _photos(7, seed=5)
    grown = SsimReferences(refs[:2])
    for r in refs[2:]:
        grown.extend(r[None])
    assert len(grown) == 7
    assert np.array_equal(ssim_matrix(gen, grown), ssim_matrix(gen, refs))
    assert np.array_equal(ssim_matrix(gen, refs)[:, 4:], ssim_matrix(gen, refs[4:]))


def test_copy_similarity_falls_back_to_ssim_and_takes_max_over_references():
    imgs = _photos(3, seed=1)
    sim = CopySimilarity(None)
    assert sim.name == "ssim"
    refs = [imgs[[1, 0]], imgs[[2]]]  # image 0's references contain itself, image 1's do not
    best = sim.max_over_references(imgs[:2], refs)
    assert best[0] == pytest.approx(1.0) and best[1] < 0.4


@pytest.fixture(scope="module")
def sscd_standin(tmp_path_factory) -> Path:
    """A torchscript module with SSCD's interface ((B, 3, 224, 224) -> (B, D)): pooled pixels."""
    import torch

    class Pool(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)

    path = tmp_path_factory.mktemp("sscd") / "sscd_disc_large.torchscript.pt"
    torch.jit.script(Pool()).save(str(path))
    return path


def test_sscd_path_identical_images_cosine_one(sscd_standin):
    imgs = _photos(3, seed=2)
    sim = CopySimilarity(sscd_standin)
    assert sim.name == "sscd"
    s = sim.similarity(imgs, imgs)
    assert np.allclose(np.diag(s), 1.0, atol=1e-5)
    assert s[0, 1] < 0.99


def test_sscd_missing_file_says_what_to_download(tmp_path):
    with pytest.raises(InputError, match="sscd_disc_large.torchscript.pt.*sscd-copy-detection"
                                         "|sscd-copy-detection.*sscd_disc_large"):
        CopySimilarity(tmp_path / "nope.pt")


def test_cosine_matrix():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert np.allclose(cosine_matrix(a, a), np.eye(2))


def test_clip_score_formula_clipped_at_zero():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    txt = np.array([[2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(clip_score(img, txt), [100.0, 0.0, 100 / np.sqrt(2)])


def test_frechet_distance_zero_on_itself_and_grows_with_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8))
    assert abs(frechet_distance(x, x)) < 1e-6
    d = [frechet_distance(x, x + s) for s in (0.5, 1.0, 2.0)]
    assert d[0] < d[1] < d[2]
    # a pure mean shift s on every one of 8 dimensions adds |shift|^2 = 8 s^2 (covariances equal)
    assert d[1] == pytest.approx(8.0, rel=1e-6)


def test_frechet_distance_gaussians_of_different_scale():
    # N(0, I) vs N(0, 4I) in 2 dims: Tr(I + 4I - 2 * 2I) = 2 (with sample covariances: close to it)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20000, 2)), 2 * rng.normal(size=(20000, 2))
    assert frechet_distance(a, b) == pytest.approx(2.0, abs=0.1)


def test_clip_missing_weights_says_what_to_download(tmp_path):
    with pytest.raises(InputError, match="open_clip_model.safetensors"):
        ClipScorer.load("ViT-H-14", tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="open_clip_config.json"):
        ClipScorer.load(f"local-dir:{tmp_path}")


def test_random_clip_loads_through_local_dir(tmp_path):
    from memprune.testbed.clip import ClipSpec, save_untrained_clip

    folder = save_untrained_clip(tmp_path / "clip",
                                 ClipSpec(vision_width=32, vision_layers=1, text_width=32, text_layers=1))
    scorer = ClipScorer.load(None, folder)  # a folder as weights: open_clip's local-dir path
    imgs = _photos(3)
    f = scorer.image_features(imgs)
    assert f.shape == (3, 64) and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    s = scorer.score(imgs, ["a", "b", "c"])
    assert s.shape == (3,) and (s >= 0).all() and (s <= 100).all()


@pytest.mark.skipif(not (SHIPPED_CLIP / "open_clip_config.json").exists(),
                    reason="resources/testbed_clip not trained yet")
def test_shipped_clip_prefers_the_own_caption():
    """Scenes (training and held-out combinations) score higher with their own caption than with another
    scene's caption, on average; held-out scenes are never seen by the CLIP."""
    from memprune.testbed.scenes import render_scene, scene_caption, scene_combinations

    scorer = ClipScorer.load(None, SHIPPED_CLIP)
    combos = scene_combinations()[::37][:10]
    images = np.stack([render_scene(a) for a in combos])
    own = [scene_caption(a) for a in combos]
    other = own[1:] + own[:1]
    s_own, s_other = scorer.score(images, own), scorer.score(images, other)
    assert s_own.mean() > s_other.mean() + 2.0
    assert (s_own > s_other).mean() >= 0.8
