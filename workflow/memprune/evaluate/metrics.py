"""Image metrics: copy similarity to training images, copy rates, CLIP score, Frechet distance, tiled L2.
(Prompt following on the testbed's synthetic scenes is `testbed.scenes.prompt_following`.)

Copy similarity is SSCD (Pizzi et al. 2022, `sscd_disc_large`, the paper's metric) when its torchscript file
is configured, otherwise SSIM (scikit-image, RGB, data range 255): the testbed's default, since SSCD weights
are not available offline, and at 32x32 SSIM separates copies (0.6-1.0) from unrelated images (about
0-0.3) cleanly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from memprune.errors import InputError

log = logging.getLogger(__name__)


_SSIM_WIN = 7
_SSIM_COV_NORM = _SSIM_WIN * _SSIM_WIN / (_SSIM_WIN * _SSIM_WIN - 1)  # sample covariance


def _window_mean(x: np.ndarray) -> np.ndarray:
    """The 7x7 uniform-window mean over (H, W) of (N, H, W, C) float64 images (reflect mode, as scikit-image)."""
    from scipy.ndimage import uniform_filter

    return uniform_filter(x, size=(1, _SSIM_WIN, _SSIM_WIN, 1), mode="reflect")


class SsimReferences:
    """Reference images with their SSIM window statistics computed once: `ssim_matrix(g, refs)` against a
    reference set that is queried many times (or grows one image at a time, `extend`) filters only the cross
    terms. Results are bit-identical to `ssim_matrix` on the stacked images."""

    def __init__(self, references: np.ndarray):
        self._n = 0
        self._arrays = [np.empty((0,) + tuple(references.shape[1:])) for _ in range(3)]  # images, mean, var
        self.extend(references)

    def __len__(self) -> int:
        return self._n

    @property
    def images(self) -> np.ndarray:
        return self._arrays[0][: self._n]

    @property
    def mean(self) -> np.ndarray:
        return self._arrays[1][: self._n]

    @property
    def var(self) -> np.ndarray:
        return self._arrays[2][: self._n]

    def extend(self, references: np.ndarray) -> None:
        r = references.astype(np.float64)
        u = _window_mean(r)
        v = _SSIM_COV_NORM * (_window_mean(r * r) - u * u)
        n = self._n + len(r)
        if n > len(self._arrays[0]):  # grow geometrically: a set extended one image at a time stays linear
            cap = max(n, 2 * len(self._arrays[0]))
            grown = [np.empty((cap,) + a.shape[1:]) for a in self._arrays]
            for g, a in zip(grown, self._arrays):
                g[: self._n] = a[: self._n]
            self._arrays = grown
        for a, x in zip(self._arrays, (r, u, v)):
            a[self._n : n] = x
        self._n = n


def ssim_matrix(generated: np.ndarray, references: np.ndarray | SsimReferences) -> np.ndarray:
    """SSIM of every generated image against every reference: (G, H, W, 3) x (R, H, W, 3) uint8 -> (G, R).
    `references` may be an `SsimReferences` (its window statistics computed once, for repeated queries).

    Vectorised form of scikit-image's `structural_similarity` defaults (7x7 uniform window, K1=0.01,
    K2=0.03, sample covariance, mean over valid pixels and channels); `test_metrics` checks it against
    scikit-image itself.
    """
    refs = references if isinstance(references, SsimReferences) else SsimReferences(references)
    gen = SsimReferences(generated)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    r, ur, vr = refs.images, refs.mean, refs.var
    out = np.empty((len(gen), len(refs)))
    pad = (_SSIM_WIN - 1) // 2
    # Cross terms need the (G, R) product: loop over generated images to bound memory.
    for i in range(len(gen)):
        g, ug, vg = gen.images[i : i + 1], gen.mean[i : i + 1], gen.var[i : i + 1]
        cov = _SSIM_COV_NORM * (_window_mean(g * r) - ug * ur)
        s = ((2 * ug * ur + c1) * (2 * cov + c2)) / ((ug**2 + ur**2 + c1) * (vg + vr + c2))
        out[i] = s[:, pad:-pad, pad:-pad, :].mean(axis=(1, 2, 3))
    return out


def copied_in_most_seeds(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """(..., seed) copy similarities -> (...) bool: the prompt copies when more than half of its seeds reach
    the threshold (NaN, a seed not generated, never counts as reaching it)."""
    return (similarity >= threshold).mean(axis=-1) > 0.5


def copy_rate(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """(..., prompt, seed) -> (...) the fraction of prompts that copy (`copied_in_most_seeds`); prompts whose
    seeds are all NaN (not generated) are skipped, and the rate is NaN when no prompt is left."""
    valid = ~np.isnan(similarity).all(axis=-1)
    copied = copied_in_most_seeds(similarity, threshold)
    n = valid.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (copied & valid).sum(axis=-1) / n, np.nan)


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


# ---------------------------------------------------------------------------------------------- copy similarity

SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_large.torchscript.pt"
SSCD_HELP = (
    "download sscd_disc_large.torchscript.pt from the SSCD repository "
    "(github.com/facebookresearch/sscd-copy-detection, 'Pretrained models' table: "
    f"{SSCD_URL}) and put it at that path, "
    "or set evaluate.sscd to null to fall back to SSIM"
)


class SSCD:
    """SSCD copy-detection descriptors: Resize 256, CenterCrop 224, Normalize(0.5, 0.5), L2-normalised."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 32):
        import torch

        path = Path(path)
        if not path.is_file():
            raise InputError(f"SSCD model {path} not found: {SSCD_HELP}")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load: the format SSCD is published in
            self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device = device
        self.batch_size = batch_size

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float32, unit norm."""
        import torch
        import torch.nn.functional as F
        from torchvision.transforms import v2 as T

        tf = T.Compose([T.Resize(256, antialias=True), T.CenterCrop(224),
                        T.ToDtype(torch.float32, scale=True), T.Normalize([0.5] * 3, [0.5] * 3)])
        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size])).permute(0, 3, 1, 2)
            x = torch.stack([tf(img) for img in x]).to(self.device)
            with torch.inference_mode():
                out.append(F.normalize(self.model(x).float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, D) x (M, D) -> (N, M) cosine similarities."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


class CopySimilarity:
    """`similarity(generated, references) -> (G, R)`: SSCD cosine when `sscd_path` is given, else SSIM."""

    def __init__(self, sscd_path: str | Path | None = None, device: str = "cpu"):
        self.sscd = SSCD(sscd_path, device) if sscd_path else None
        self.name = "sscd" if self.sscd else "ssim"

    def similarity(self, generated: np.ndarray, references: np.ndarray) -> np.ndarray:
        if self.sscd is None:
            if generated.shape[1:] != references.shape[1:]:
                references = resize_images(references, generated.shape[1:3])
            return ssim_matrix(generated, references)
        return cosine_matrix(self.sscd.embed(generated), self.sscd.embed(references))

    def max_over_references(self, generated: np.ndarray, references: list[np.ndarray]) -> np.ndarray:
        """generated (N, H, W, 3), references[i] (R_i, h, w, 3): (N,) max similarity of image i to its own
        references."""
        return np.array([self.similarity(g[None], r).max() for g, r in zip(generated, references)])


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.BICUBIC)) for im in images])


# ---------------------------------------------------------------------------------------------- CLIP

CLIP_HELP = (
    "download the open_clip weights, e.g. ViT-H-14 laion2b_s32b_b79k (SD2) or ViT-g-14 laion2b_s12b_b42k (SD1.5): "
    "the file open_clip_model.safetensors of the Hugging Face repositories laion/CLIP-ViT-H-14-laion2B-s32B-b79K / "
    "laion/CLIP-ViT-g-14-laion2B-s12B-b42K, and set evaluate.clip.weights to its local path"
)
# the SD configs' CLIP models: open_clip name -> (pretrained tag, the Hugging Face repository holding its
# open_clip_model.safetensors); `memprune check` prints the download command from it
CLIP_HUB = {"ViT-H-14": ("laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
            "ViT-g-14": ("laion2b_s12b_b42k", "laion/CLIP-ViT-g-14-laion2B-s12B-b42K")}


class ClipScorer:
    """An open_clip model used for CLIP scores and as a feature space.

    `ClipScorer.load(name, weights)`: `name` an open_clip model name (ViT-H-14, ...) with `weights` a local
    file, or `name` = "local-dir:<folder>" (open_clip_config.json + weights in the folder, as the testbed's
    resources/testbed_clip) with `weights` None. A folder given as `weights` is read as local-dir too.
    """

    def __init__(self, model, preprocess, tokenizer, device: str, batch_size: int = 64):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.batch_size = device, batch_size

    @classmethod
    def load(cls, name: str | None, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        import open_clip

        if weights is not None and Path(weights).is_dir():
            name, weights = f"local-dir:{weights}", None
        if name is None:
            raise InputError("evaluate.clip: give an open_clip model name with weights, or a local-dir folder")
        if name.startswith("local-dir:"):
            folder = Path(name[len("local-dir:"):])
            if not (folder / "open_clip_config.json").is_file():
                raise InputError(f"CLIP model folder {folder}: no open_clip_config.json (train it with "
                                 "`memprune train-clip` or restore resources/testbed_clip)")
            model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
        else:
            if weights is None or not Path(weights).is_file():
                raise InputError(f"CLIP weights {weights} for {name} not found: {CLIP_HELP}")
            # open_clip reads .safetensors without unpickling; .bin/.pt only with torch's weights_only loader.
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(weights), device=device)
        tokenizer = open_clip.get_tokenizer(name)
        return cls(model.eval(), preprocess, tokenizer, device, batch_size)

    def _encode(self, items, encode, prepare) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(items), self.batch_size):
            x = prepare(items[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode():
                out.append(encode(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def image_embeddings(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) the image tower's projected embeddings (not normalised): the Frechet
        feature space when no Inception weights are configured."""
        import torch
        from PIL import Image

        def prepare(batch):
            return torch.stack([self.preprocess(Image.fromarray(im)) for im in batch])

        return self._encode(images, self.model.encode_image, prepare)

    def image_features(self, images: np.ndarray) -> np.ndarray:
        """(N, D) unit-norm image embeddings."""
        return cosine_normalize(self.image_embeddings(images))

    def text_features(self, texts: list[str]) -> np.ndarray:
        """(N, D) unit-norm text embeddings."""
        return cosine_normalize(self._encode(list(texts), self.model.encode_text, self.tokenizer))

    def score(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        """(N,) CLIP score of image i with text i: 100 * max(cos, 0)."""
        return clip_score(self.image_features(images), self.text_features(texts))


def cosine_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clip_score(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """Row-wise CLIP score (Hessel et al. 2021 with w = 100, as torchmetrics): 100 * max(cos(image, text), 0)."""
    cos = (cosine_normalize(image_features) * cosine_normalize(text_features)).sum(-1)
    return 100.0 * np.maximum(cos, 0.0)


# ---------------------------------------------------------------------------------------------- Frechet distance


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The FID formula on two feature sets (N, D), (M, D):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), sample covariances (ddof 1)."""
    from scipy import linalg

    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Near-singular product (few samples): the standard fix of pytorch-fid, a small diagonal offset.
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


class FrechetReference:
    """A fixed reference feature set (M, D) with its mean, covariance and the covariance's square root, computed
    once for every model compared to it (`bootstrap`)."""

    def __init__(self, reference: np.ndarray):
        b = np.asarray(reference, np.float64)
        self.mean, self.cov = b.mean(0), np.atleast_2d(np.cov(b, rowvar=False))
        w, v = np.linalg.eigh(self.cov)
        self.root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    def bootstrap(self, features: np.ndarray, resamples: int, seed: int) -> np.ndarray:
        """(resamples,) Frechet distances of `features` (prompt, seed, D) to the reference, each on the prompts
        drawn with replacement (a prompt with all its seeds) from a generator seeded with `seed`: the same draws for
        every model with as many prompts. Tr (S_a S_r)^(1/2) is the sum of the square roots of the eigenvalues of
        S_r^(1/2) S_a S_r^(1/2), taken in the smaller of the samples' and the features' dimensions (so a resample
        costs an n x n or D x D symmetric eigenproblem, n the resample's images)."""
        x = np.asarray(features, np.float64)
        n_prompts, dim = x.shape[0], x.shape[-1]
        draws = np.random.default_rng(seed).integers(0, n_prompts, size=(resamples, n_prompts))
        out = np.empty(resamples)
        for r, idx in enumerate(draws):
            a = x[idx].reshape(-1, dim)
            centred = (a - a.mean(0)) / np.sqrt(len(a) - 1)
            y = centred @ self.root
            gram = y @ y.T if len(a) < dim else y.T @ y
            trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
            diff = a.mean(0) - self.mean
            out[r] = max(diff @ diff + (centred * centred).sum() + np.trace(self.cov) - 2 * trace_root, 0.0)
        return out


class InceptionFeatures:
    """pool3 features (2048) of torchvision's Inception v3 from a local safetensors state dict (optional:
    FID's usual space; without it the CLIP image tower is the feature space). Note torchvision's ImageNet
    weights differ slightly from the TF-FID Inception, so values are comparable within memprune only."""

    def __init__(self, weights: str | Path, device: str = "cpu", batch_size: int = 32):
        import torch
        from safetensors.torch import load_file
        from torchvision.models import inception_v3

        if not Path(weights).is_file():
            raise InputError(
                f"Inception weights {weights} not found: save torchvision's inception_v3 IMAGENET1K_V1 state dict "
                "as safetensors there, or set evaluate.inception to null (FID then uses the CLIP image tower)")
        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
        model.load_state_dict(load_file(str(weights)))
        model.fc = torch.nn.Identity()
        self.model, self.device, self.batch_size = model.eval().to(device), device, batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        out = []
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[start : start + self.batch_size]).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = ((x - mean) / std).to(self.device)
            with torch.inference_mode():
                out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out)
