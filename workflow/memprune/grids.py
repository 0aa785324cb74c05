"""One painter for every labelled image grid (testbed report, evaluation's Figure 4, the attack's generations):
rows and columns carry their labels, so a figure says which model, prompt and seed each image is."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def image_grid(cells: list[list[np.ndarray | None]], row_labels: list[str], col_labels: list[str], path: str | Path,
               title: str | None = None, cell_inches: float = 0.9, row_label_width: float = 2.6) -> None:
    """PNG of `cells[r][c]` (H, W, 3) uint8 images (None: an empty cell), each row labelled on its left and
    each column on top, pixels shown unsmoothed. Written atomically to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memprune.formats.store import atomic_file

    n_rows = len(cells)
    n_cols = max((len(r) for r in cells), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("image_grid: no images")
    if len(row_labels) != n_rows or len(col_labels) != n_cols:
        raise ValueError(f"image_grid: {n_rows} x {n_cols} cells but {len(row_labels)} row and {len(col_labels)} "
                         "column labels")
    first = next((i for row in cells for i in row if i is not None), None)
    blank = np.full_like(first, 255) if first is not None else np.full((1, 1, 3), 255, np.uint8)
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(row_label_width + n_cols * cell_inches, 0.5 + n_rows * cell_inches))
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            image = cells[r][c] if c < len(cells[r]) else None
            if image is not None:
                ax.imshow(image, interpolation="nearest")
            else:  # a blank frameless cell of the same size: `axis("off")` would hide the row's label and title
                ax.imshow(blank)
                for spine in ax.spines.values():
                    spine.set_visible(False)
            if r == 0:
                ax.set_title(col_labels[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=row_label_width / (row_label_width + n_cols * cell_inches), wspace=0.05, hspace=0.08)
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
