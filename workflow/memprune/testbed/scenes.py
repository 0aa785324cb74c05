"""The testbed's compositional scenes: a shape of a colour at a position on a background.

The grammar (`SHAPES`, `COLOURS`, `POSITIONS`, `BACKGROUNDS`), captions, rendering, and reading a scene back
off an image (`describe_scene`), which scores prompt following without a learned classifier.
"""

from __future__ import annotations

import functools

import numpy as np

RESOLUTION = 32

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "magenta": (210, 50, 200),
    "cyan": (50, 210, 220),
}
BACKGROUNDS = {"black": (10, 10, 10), "white": (245, 245, 245), "gray": (128, 128, 128)}
# Anchor (row, col) of the shape centre, in a 32x32 image.
POSITIONS = {"left": (16, 8), "right": (16, 24), "top": (8, 16), "bottom": (24, 16), "center": (16, 16)}

SCENE_ATTRIBUTES = ("shape", "colour", "position", "background")


def scene_combinations() -> list[dict]:
    """Every (shape, colour, position, background) combination, in a fixed order."""
    return [
        {"shape": s, "colour": c, "position": p, "background": b}
        for s in SHAPES
        for c in COLOURS
        for p in POSITIONS
        for b in BACKGROUNDS
    ]


def scene_caption(attrs: dict) -> str:
    return f"a {attrs['colour']} {attrs['shape']} at the {attrs['position']} on a {attrs['background']} background"


def shape_mask(shape: str, centre: tuple[float, float], size: float, resolution: int = RESOLUTION) -> np.ndarray:
    """Boolean (H, W) mask of a shape of half-extent `size` centred at `centre` (row, col)."""
    rows, cols = np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5
    dr, dc = rows - centre[0], cols - centre[1]
    if shape == "circle":
        return dr**2 + dc**2 <= size**2
    if shape == "square":
        return (np.abs(dr) <= size * 0.85) & (np.abs(dc) <= size * 0.85)
    if shape == "triangle":  # apex up: width grows linearly from the top edge to the base
        inside_rows = (dr >= -size) & (dr <= size)
        half_width = (dr + size) / 2
        return inside_rows & (np.abs(dc) <= half_width)
    if shape == "cross":
        arm = size / 3
        return ((np.abs(dr) <= arm) & (np.abs(dc) <= size)) | ((np.abs(dc) <= arm) & (np.abs(dr) <= size))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_scene(attrs: dict, rng: np.random.Generator | None = None, resolution: int = RESOLUTION) -> np.ndarray:
    """(H, W, 3) uint8 image of a scene; `rng` adds a small jitter of position and size."""
    centre = np.array(POSITIONS[attrs["position"]], dtype=np.float32) * resolution / RESOLUTION
    size = 7.0 * resolution / RESOLUTION
    if rng is not None:
        centre = centre + rng.uniform(-1.5, 1.5, size=2)
        size = size * rng.uniform(0.9, 1.1)
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[attrs["background"]]
    image[shape_mask(attrs["shape"], tuple(centre), size, resolution)] = COLOURS[attrs["colour"]]
    return image


def describe_scene(image: np.ndarray) -> dict:
    """Read (shape, colour, position, background) back off an (H, W, 3) uint8 image.

    Background: the nearest palette colour to the median border pixel. Colour: the nearest palette colour
    to the median of the most contrasting pixels. Foreground: pixels beyond half that contrast; position =
    the nearest anchor to their centroid; shape = the best-matching blurred template (`_match_shape`).
    Used to score prompt following of generated scenes, no learned classifier needed.
    """
    img = image.astype(np.float32)
    res = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = min(BACKGROUNDS, key=lambda k: np.sum((np.array(BACKGROUNDS[k]) - bg_rgb) ** 2))
    bg_palette = np.array(BACKGROUNDS[background], dtype=np.float32)
    dist = np.sqrt(((img - bg_palette) ** 2).sum(-1))
    if dist.max() < 60.0:
        return {"shape": None, "colour": None, "position": None, "background": background}
    # colour from the most contrasting pixels; edges blend with the background
    fg_rgb = np.median(img[dist >= 0.7 * dist.max()], axis=0)
    colour = min(COLOURS, key=lambda k: np.sum((np.array(COLOURS[k]) - fg_rgb) ** 2))
    # foreground at half contrast (robust to blur, whatever the background's contrast with the colour)
    contrast = float(np.sqrt(((np.array(COLOURS[colour], dtype=np.float32) - bg_palette) ** 2).sum()))
    fg = dist > 0.5 * contrast
    if fg.sum() < 4:
        return {"shape": None, "colour": colour, "position": None, "background": background}
    rows, cols = np.nonzero(fg)
    centre = (rows.mean() + 0.5, cols.mean() + 0.5)
    scale = RESOLUTION / res
    position = min(
        POSITIONS, key=lambda k: (POSITIONS[k][0] - centre[0] * scale) ** 2 + (POSITIONS[k][1] - centre[1] * scale) ** 2
    )
    shape = _match_shape(img, bg_palette, np.array(COLOURS[colour], dtype=np.float32), fg)
    return {"shape": shape, "colour": colour, "position": position, "background": background}


_TEMPLATE_SCALES = (0.85, 1.0, 1.15, 1 / 0.85)
_TEMPLATE_SHIFTS = (-0.5, 0.0, 0.5)


@functools.lru_cache(maxsize=4096)
def _blurred_templates(shape: str, centre: tuple[float, float], extent: float, resolution: int) -> np.ndarray:
    """(36, res, res) float32, read-only: `shape` drawn at `centre` and `extent` times each scale, shifted by each
    half-pixel offset, blurred (Gaussian, sigma 1 px). Bounding boxes are whole pixels, so images share these."""
    from scipy.ndimage import gaussian_filter

    out = np.stack([
        gaussian_filter(shape_mask(shape, (centre[0] + dr, centre[1] + dc), extent * scale, resolution)
                        .astype(np.float32), 1.0)
        for scale in _TEMPLATE_SCALES for dr in _TEMPLATE_SHIFTS for dc in _TEMPLATE_SHIFTS
    ])
    out.flags.writeable = False
    return out


def _match_shape(img: np.ndarray, bg: np.ndarray, fg_colour: np.ndarray, fg: np.ndarray) -> str:
    """The shape whose template, blurred like a decoded image (Gaussian, sigma 1 px) and drawn at the
    foreground's box centre and extent (a few sizes and half-pixel shifts), is closest (L2) to the image's
    foreground opacity: the projection of each pixel on the background -> colour segment."""
    v = fg_colour - bg
    alpha = np.clip(((img - bg) @ v) / (v @ v), 0.0, 1.0)
    rows, cols = np.nonzero(fg)
    centre = (float(rows.min() + rows.max() + 1) / 2, float(cols.min() + cols.max() + 1) / 2)
    extent = float(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)) / 2

    def error(shape: str) -> float:
        templates = _blurred_templates(shape, centre, extent, img.shape[0])
        return float(((templates - alpha) ** 2).reshape(len(templates), -1).sum(axis=1).min())

    return min(SHAPES, key=error)


# Caption -> attributes of every scene combination (the captions are distinct).
SCENES_BY_CAPTION = {scene_caption(a): a for a in scene_combinations()}


def attribute_matches(images: np.ndarray, attributes: list[dict]) -> np.ndarray:
    """(N, 4) bool: each of shape, colour, position, background read back off the image matches the request."""
    out = np.zeros((len(images), len(SCENE_ATTRIBUTES)), dtype=bool)
    for i, (img, a) in enumerate(zip(images, attributes)):
        seen = describe_scene(img)
        out[i] = [seen[k] == a[k] for k in SCENE_ATTRIBUTES]
    return out


def prompt_following(images: np.ndarray, attributes: list[dict]) -> np.ndarray:
    """(N,) bool: the scene read back off each image matches all four requested attributes."""
    return attribute_matches(images, attributes).all(axis=1)
