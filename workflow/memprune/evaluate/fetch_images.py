"""`memprune fetch-training-images`: download the training images of memorized prompts into the layout memprune reads.

Layout: `<root>/<index>/0.png`, index = the prompt's 0-based line in the prompt file (the order of the
field's released lists; `evaluate.training_images.TrainingImages` reads the same layout). Each image is decoded,
converted to RGB PNG and renamed into place, so a folder holds a complete image or nothing. Dead links (HTTP errors,
timeouts, bytes that are not an image) are reported, not fatal: `<root>/fetch_report.csv` lists every
prompt with its status, and the summary says how many are missing.
"""

from __future__ import annotations

import csv
import io
import logging
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from memprune.errors import InputError
from memprune.formats.prompts import read_jsonl
from memprune.formats.store import atomic_dir, atomic_file

log = logging.getLogger(__name__)

USER_AGENT = "memprune-fetch-training-images (research; copy detection of diffusion models)"


def _fetch_one(index: int, url: str, root: Path, timeout: float) -> dict:
    from PIL import Image, UnidentifiedImageError

    folder = root / str(index)
    if folder.is_dir() and any(folder.glob("*.png")):
        return {"index": index, "url": url, "status": "present"}
    if not url:
        return {"index": index, "url": url, "status": "dead: no url"}
    try:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
        image = Image.open(io.BytesIO(data))
        image.load()
        image = image.convert("RGB")
    except urllib.error.HTTPError as e:
        return {"index": index, "url": url, "status": f"dead: HTTP {e.code}"}
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        if isinstance(e, UnidentifiedImageError):
            return {"index": index, "url": url, "status": "dead: not an image"}
        reason = getattr(e, "reason", e)
        return {"index": index, "url": url, "status": f"dead: {type(e).__name__}: {reason}"[:200]}
    with atomic_dir(folder) as tmp:
        image.save(tmp / "0.png", format="PNG")
    return {"index": index, "url": url, "status": "downloaded"}


def _csv_column(path: Path, name: str) -> list[str]:
    """The column `name` (any case) of a `;`- or `,`-separated file, one value per row ("" where empty)."""
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text.strip() else ""
    reader = csv.DictReader(io.StringIO(text, newline=""),
                            delimiter=";" if first.count(";") > first.count(",") else ",")
    column = {n.strip().lower(): n for n in reader.fieldnames or [] if n}.get(name)
    if column is None:
        raise InputError(f"{path}:1: no column {name!r} in header {reader.fieldnames}")
    return [(row[column] or "").strip() for row in reader]


def fetch_training_images(prompts_file: Path, root: Path, timeout: float = 20.0, workers: int = 8) -> dict[str, int]:
    """Download every row's `url` of a jsonl (or csv) prompt file to `<root>/<index>/0.png`; skip those present.

    Returns counts per status kind (present, downloaded, dead) and writes `<root>/fetch_report.csv`."""
    prompts_file, root = Path(prompts_file), Path(root)
    if prompts_file.suffix.lower() == ".csv":  # NeMo's LAION lists: `;`-separated, columns Caption and URL
        from memprune.formats.prompts import read_prompts

        urls = _csv_column(prompts_file, "url")
        rows = [{"caption": c, "url": u} for c, u in zip(read_prompts(prompts_file), urls)]
    elif prompts_file.suffix.lower() == ".jsonl":
        rows = read_jsonl(prompts_file, required=("caption",))
    else:
        raise InputError(f"{prompts_file}: fetch-training-images needs a .jsonl (`url` per row) or .csv (a URL column) "
                         "prompt file")
    if not any("url" in r for r in rows):
        raise InputError(f"{prompts_file}: no row has a `url` key: nothing to download")
    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda ir: _fetch_one(ir[0], str(ir[1].get("url", "")), root, timeout),
                                enumerate(rows)))
    with atomic_file(root / "fetch_report.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["index", "url", "status"])
            writer.writeheader()
            writer.writerows(results)
    counts: dict[str, int] = {}
    for r in results:
        kind = r["status"].split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    for r in results:
        if r["status"].startswith("dead"):
            log.warning("prompt %d: %s (%s)", r["index"], r["status"], r["url"])
    return counts
