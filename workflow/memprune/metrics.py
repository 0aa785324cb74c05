"""Image metrics: copy similarity to training images, tiled L2, prompt following on synthetic scenes.

Copy similarity on the testbed is SSIM (scikit-image, RGB, data range 255): SSCD weights are not available
offline, and at 32x32 SSIM separates copies (0.6-1.0) from unrelated images (about 0-0.3) cleanly.
"""

from __future__ import annotations

import numpy as np


def ssim_matrix(generated: np.ndarray, references: np.ndarray) -> np.ndarray:
    """SSIM of every generated image against every reference: (G, H, W, 3) x (R, H, W, 3) uint8 -> (G, R).

    Vectorised form of scikit-image's `structural_similarity` defaults (7x7 uniform window, K1=0.01,
    K2=0.03, sample covariance, mean over valid pixels and channels); `test_metrics` checks it against
    scikit-image itself.
    """
    from scipy.ndimage import uniform_filter

    win = 7
    g = generated.astype(np.float64)[:, None]  # (G, 1, H, W, C)
    r = references.astype(np.float64)[None]  # (1, R, H, W, C)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cov_norm = win * win / (win * win - 1)

    def filt(x: np.ndarray) -> np.ndarray:
        return uniform_filter(x, size=(1, 1, win, win, 1), mode="reflect")

    ug, ur = filt(g), filt(r)
    ugg, urr = filt(g * g), filt(r * r)
    vg = cov_norm * (ugg - ug * ug)
    vr = cov_norm * (urr - ur * ur)
    out = np.empty((g.shape[0], r.shape[1]))
    pad = (win - 1) // 2
    # Cross terms need the (G, R) product: loop over generated images to bound memory.
    for i in range(g.shape[0]):
        ugr = filt(g[i : i + 1] * r)
        cov = cov_norm * (ugr - ug[i : i + 1] * ur)
        s = ((2 * ug[i : i + 1] * ur + c1) * (2 * cov + c2)) / ((ug[i : i + 1] ** 2 + ur**2 + c1) * (vg[i : i + 1] + vr + c2))
        out[i] = s[0, :, pad:-pad, pad:-pad, :].mean(axis=(1, 2, 3))
    return out


def tiled_l2(a: np.ndarray, b: np.ndarray, grid: int = 4) -> np.ndarray:
    """Carlini et al.'s tiled distance: images split into grid x grid tiles, distance = the maximum over
    tiles of the per-tile L2 (pixels in [0, 1], normalised by tile size). (N, H, W, C) x (M, H, W, C) -> (N, M).
    """
    def tiles(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        th, tw = h // grid, w // grid
        x = x[:, : th * grid, : tw * grid].astype(np.float64) / 255.0
        return x.reshape(n, grid, th, grid, tw, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, grid * grid, -1)

    ta, tb = tiles(a), tiles(b)
    # Per-tile squared distances via the expansion |x|^2 + |y|^2 - 2xy, vectorised over all pairs.
    sq = (ta**2).sum(-1)[:, None, :] + (tb**2).sum(-1)[None, :, :] - 2 * np.einsum("ntd,mtd->nmt", ta, tb)
    per_tile = np.sqrt(np.maximum(sq, 0.0) / ta.shape[-1])
    return per_tile.max(-1)


SCENE_ATTRIBUTES = ("shape", "colour", "position", "background")


def attribute_matches(images: np.ndarray, attributes: list[dict]) -> np.ndarray:
    """(N, 4) bool: each of shape, colour, position, background read back off the image matches the request."""
    from .testbed import describe_scene

    out = np.zeros((len(images), len(SCENE_ATTRIBUTES)), dtype=bool)
    for i, (img, a) in enumerate(zip(images, attributes)):
        seen = describe_scene(img)
        out[i] = [seen[k] == a[k] for k in SCENE_ATTRIBUTES]
    return out


def prompt_following(images: np.ndarray, attributes: list[dict]) -> np.ndarray:
    """(N,) bool: the scene read back off each image matches all four requested attributes."""
    return attribute_matches(images, attributes).all(axis=1)
