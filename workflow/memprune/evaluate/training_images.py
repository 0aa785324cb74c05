"""Ground truth: the training images of memorized prompts (and the scene attributes of testbed prompts), from one
of two layouts:

* the testbed dataset directory: `manifest.jsonl`, caption -> its images (and, for scenes, their attributes);
* a directory `<root>/<index>/*.png` (or .jpg), index = the prompt's 0-based line in a prompt file: what
  `memprune fetch-training-images` writes for Stable Diffusion's memorized prompts.

`TrainingImages` is the one reader of these layouts: evaluation's copy similarity and Figure 4, the Frechet
reference images, and the attack's "actually memorized" check all read through it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memprune.errors import InputError
from memprune.formats.prompts import read_prompts


def _load(files: list[Path], size: tuple[int, int] | None = None) -> np.ndarray:
    """(len(files), H, W, 3) uint8, each image converted to RGB (and resized to `size` = (W, H) if given)."""
    from PIL import Image

    images = []
    for f in files:
        image = Image.open(f).convert("RGB")
        images.append(np.asarray(image.resize(size) if size else image))
    return np.stack(images)


class TrainingImages:
    """Training images of prompts, and scene attributes of testbed prompts.

    `data`: the testbed dataset directory (manifest.jsonl); with `model`, refused (`check_trained_on`) when
    that model is a testbed trained on another dataset, whose photos would score its copies wrongly. Or `root`:
    a directory `<root>/<index>/*.png`, index = the prompt's 0-based line in `memorized_file` (`kind` names
    that prompt file in errors). `rows` are the manifest's rows (empty for a `root` layout)."""

    def __init__(self, data: str | Path | None = None, root: str | Path | None = None,
                 memorized_file: str | Path | None = None, model: str | Path | None = None,
                 kind: str = "memorized"):
        self.data = Path(data) if data else None
        self.root = Path(root) if root else None
        self.kind = kind
        self.rows: list[dict] = []
        self.attributes: dict[str, dict] = {}
        self._by_caption: dict[str, list[dict]] = {}
        if self.data is not None:
            from memprune.testbed.dataset import check_trained_on, read_manifest
            from memprune.testbed.scenes import SCENE_ATTRIBUTES

            if model is not None:
                check_trained_on(Path(model), self.data)
            self.rows = read_manifest(self.data / "manifest.jsonl")
            for row in self.rows:
                self._by_caption.setdefault(row["caption"], []).append(row)
                if all(k in row for k in SCENE_ATTRIBUTES):
                    self.attributes[row["caption"]] = {k: row[k] for k in SCENE_ATTRIBUTES}
        self.index = {p: i for i, p in enumerate(read_prompts(Path(memorized_file)))} if memorized_file else {}
        if self.data is None and self.root is None:
            raise InputError("evaluate: no ground truth: give the testbed dataset or evaluate.ground_truth (a "
                             "directory)")

    def _files(self, prompt: str, split: str | None = None) -> list[Path]:
        """The image files of `prompt` (manifest rows of `split` only, if given); [] when it has none."""
        if self.root is not None:
            if prompt not in self.index:
                return []
            folder = self.root / str(self.index[prompt])
            return sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg"))
        return [self.data / r["image"] for r in self._by_caption.get(prompt, [])
                if split is None or r.get("split", "train") == split]

    def images(self, prompt: str, split: str | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
        """(R, H, W, 3) uint8: the training images of `prompt` (resized to `size` = (W, H) if given); an
        InputError naming the file or layout when there are none."""
        files = self._files(prompt, split)
        if files:
            return _load(files, size)
        if self.root is None:
            raise InputError(f"ground truth: prompt {prompt[:60]!r} is not in {self.data}/manifest.jsonl"
                             + (f" (split {split})" if split else ""))
        if prompt not in self.index:
            raise InputError(f"ground truth: prompt {prompt[:60]!r} is not in the {self.kind} prompt file")
        raise InputError(
            f"ground truth: no image for {self.kind} prompt {self.index[prompt]} ({prompt[:60]!r}): expected "
            f"{self.root / str(self.index[prompt])}/*.png (layout <root>/<index>/*.png, index = 0-based line of the "
            f"{self.kind} prompt file)")

    def references(self, prompts: list[str], split: str | None = "train") -> list[np.ndarray | None]:
        """Per prompt, its training images (manifest rows of `split`), or None where none is known."""
        return [_load(files) if (files := self._files(p, split)) else None for p in prompts]

    def first_image(self, prompt: str, split: str | None = None,
                    size: tuple[int, int] | None = None) -> np.ndarray | None:
        """The prompt's first training image (H, W, 3) uint8 (resized to `size` = (W, H) if given), or None where
        none is known."""
        files = self._files(prompt, split)
        return _load(files[:1], size)[0] if files else None


def first_photos(groups: dict[str, list[str]], data: str | Path | None = None, images: dict | None = None,
                 size: tuple[int, int] | None = None, max_per_group: int | None = None) -> list[dict]:
    """{prompt, group, image (H, W, 3) uint8} for the first `max_per_group` prompts of each group ({group: prompt
    list}): their first training image from the testbed dataset `data`, or from `images` = {group: (root, prompt
    file)} (the fetched layout), resized to `size` = (W, H) if given. A testbed prompt without one is an InputError;
    a fetched one is skipped (dead links are expected: the fetch report lists them), and a group left empty is one."""
    if images:
        missing = sorted(set(groups) - set(images))
        if missing:
            raise InputError(f"training images: no directory for the groups {missing}")
        truths = {g: TrainingImages(root=root, memorized_file=file, kind=g) for g, (root, file) in images.items()}
    else:
        truths = dict.fromkeys(groups, TrainingImages(data=data))
    photos = []
    for group, prompts in groups.items():
        for prompt in prompts[:max_per_group]:
            image = truths[group].first_image(prompt, size=size)
            if image is None and not images:
                raise InputError(f"{data}: no training image for the {group} prompt {prompt[:60]!r}")
            if image is not None:
                photos.append({"prompt": prompt, "group": group, "image": image})
        if images and not any(p["group"] == group for p in photos):
            raise InputError(f"{images[group][0]}: no fetched image for any {group} prompt (memprune "
                             "fetch-training-images)")
    return photos
