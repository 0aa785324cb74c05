"""Pruning: a mask store turned into an edit checkpoint (`formats.edits`), its unions zeroed."""

from __future__ import annotations

from pathlib import Path


def prune(model: str, mask_store: str | Path, out: str | Path) -> dict:
    """An edit checkpoint of `model` with a mask store's unions zeroed (the paper's eq. 7 for Wanda masks)."""
    from memprune.formats.edits import write_masked_edit
    from memprune.formats.masks import read_mask_set

    ms = read_mask_set(mask_store)
    return write_masked_edit(model, ms.layer_masks(), out, ms.attrs["method"], ms.attrs["params"],
                             expected_base=ms.attrs.get("base_unet_sha256"),
                             extra={"masks": str(mask_store), "collection": ms.attrs.get("collection"),
                                    "subset": ms.attrs.get("subset"), "n_prompts": ms.attrs.get("n_prompts")})
