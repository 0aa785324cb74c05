"""The copy decision, one value: the similarity that compares a generation with a training image (SSIM, or SSCD
cosine with a TorchScript checkpoint) and the threshold at which a generation copies it.

Built once from the config (`evaluate.sscd` names the checkpoint, null: SSIM; a stage's `copy_threshold`, null:
the top-level one) and handed to every stage that decides "this is a copy": the evaluation, the extraction
attack's own / another image check, the recovery attack's MR, the adversarial surrogate. Every output records
`attrs()`, and tables stacked from several runs must agree on it (`same_metric`).

SSCD checkpoints in use: `sscd_disc_large` (the paper, MemBench) and `sscd_disc_mixup` (NeMo); both are
TorchScript files of facebookresearch/sscd-copy-detection and load the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memprune.errors import InputError

SSCD_CHECKPOINTS = ("sscd_disc_large", "sscd_disc_mixup")


@dataclass(frozen=True)
class CopyMetric:
    threshold: float
    sscd: str | None = None  # a TorchScript SSCD checkpoint; None: SSIM
    device: str = "cpu"
    _model: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not 0 <= float(self.threshold) <= 1:
            raise InputError(f"copy threshold {self.threshold} outside [0, 1]")

    @property
    def name(self) -> str:
        return "sscd" if self.sscd else "ssim"

    @property
    def checkpoint(self) -> str:
        """The SSCD checkpoint's name (its file name without `.torchscript.pt`), "" for SSIM."""
        return Path(self.sscd).name.split(".")[0] if self.sscd else ""

    def label(self) -> str:
        """How tables and long names say it: "SSIM >= 0.4", "SSCD (sscd_disc_large) >= 0.5"."""
        what = f"SSCD ({self.checkpoint})" if self.sscd else "SSIM"
        return f"{what} >= {self.threshold:g}"

    def attrs(self) -> dict:
        """What every output that decides copies records."""
        return {"copy_metric": self.name, "copy_threshold": float(self.threshold), "copy_checkpoint": self.checkpoint}

    def similarity(self, generated: np.ndarray, references: np.ndarray) -> np.ndarray:
        """(G, H, W, 3) x (R, h, w, 3) uint8 -> (G, R) similarities (the SSCD model is loaded once, on first use)."""
        from memprune.evaluate.metrics import CopySimilarity

        if "copier" not in self._model:
            self._model["copier"] = CopySimilarity(self.sscd, self.device)
        return self._model["copier"].similarity(generated, references)

    def copies(self, similarity) -> np.ndarray:
        """Similarity at or above the threshold (NaN: no)."""
        return np.nan_to_num(np.asarray(similarity, dtype=float), nan=-np.inf) >= self.threshold


def add_copy_metric_arguments(p, threshold_default: float | None = None) -> None:
    """`--copy-threshold` and `--sscd` (the one way a command is told how copies are decided)."""
    p.add_argument("--copy-threshold", type=float, default=threshold_default,
                   required=threshold_default is None, help="similarity at or above which a generation copies")
    p.add_argument("--sscd", default=None, help="SSCD TorchScript checkpoint (default: SSIM)")


def copy_metric_from_args(args, device: str = "cpu") -> CopyMetric:
    return CopyMetric(float(args.copy_threshold), args.sscd or None, device)


def copy_metric_options(threshold: float, sscd: str | None) -> str:
    """The command-line form of a copy metric (`add_copy_metric_arguments`), for the plan."""
    return f"--copy-threshold {threshold}" + (f" --sscd {sscd}" if sscd else "")


COPY_KEYS = ("copy_metric", "copy_threshold", "copy_checkpoint")


def same_metric(attrs: list[dict], where: str, keys: tuple = COPY_KEYS) -> dict:
    """The one copy metric of several outputs' attributes (`keys` of each; absent: "", as outputs made before
    SSCD could score every stage), or an error naming what differs."""
    seen = {tuple(str(a.get(k, "")) for k in keys) for a in attrs}
    if len(seen) > 1:
        listed = "; ".join(", ".join(f"{k}={v}" for k, v in zip(keys, s)) for s in sorted(seen, key=str))
        raise InputError(f"{where}: rows scored with different copy metrics ({listed}): rerun them with one")
    return dict(zip(keys, next(iter(seen)))) if seen else {}


def as_metric(copy: "CopyMetric | float") -> CopyMetric:
    """A copy metric, or SSIM at a bare threshold (the testbeds' metric)."""
    return copy if isinstance(copy, CopyMetric) else CopyMetric(float(copy))
