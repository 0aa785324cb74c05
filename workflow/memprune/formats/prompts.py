"""Prompt files (jsonl / csv / txt) with errors that name the file and line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from memprune.errors import InputError


def _read_text(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def read_jsonl(path: Path, required: tuple[str, ...] = ("caption",)) -> list[dict]:
    text = _read_text(path)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: bad JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key in required:
            if key not in row:
                raise InputError(f"{path}:{lineno}: missing key {key!r}")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def read_prompts(path: Path, column: str = "caption", allow_duplicates: bool = False) -> list[str]:
    """Prompts from a .jsonl (key `column`), .csv (`;` or `,` separated, column `column` or `prompt`),
    or any other text file (one prompt a line). Empty files, empty prompts and duplicates are errors."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = read_jsonl(path, required=(column,))
        prompts = [(i, str(r[column])) for i, r in enumerate(rows, 1)]
    elif suffix == ".csv":
        text = _read_text(path)
        first = text.splitlines()[0] if text.strip() else ""
        delim = ";" if first.count(";") > first.count(",") else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
        try:
            names = reader.fieldnames or []
            by_lower = {n.strip().lower(): n for n in names if n}
            col = by_lower.get(column.lower(), by_lower.get("prompt"))  # COCO's file says "Caption"
            if col is None:
                raise InputError(f"{path}:1: no column {column!r} or 'prompt' in header {names}")
            prompts = [(reader.line_num, row[col] or "") for row in reader]
        except csv.Error as e:
            raise InputError(f"{path}:{reader.line_num}: bad CSV ({e})") from None
    else:
        text = _read_text(path)
        prompts = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not prompts:
        raise InputError(f"{path}: no prompts")
    seen: dict[str, int] = {}
    out = []
    for lineno, p in prompts:
        p = p.strip()
        if not p:
            raise InputError(f"{path}:{lineno}: empty prompt")
        if p in seen:
            if allow_duplicates:
                continue
            raise InputError(f"{path}:{lineno}: duplicate prompt (first at line {seen[p]}): {p[:60]!r}")
        seen[p] = lineno
        out.append(p)
    return out


def json_object(text: str) -> dict:
    """A command-line JSON object argument (a rule's params), or an InputError quoting its start."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"bad JSON argument {text[:80]!r}: {e.msg}") from None
    if not isinstance(value, dict):
        raise InputError(f"expected a JSON object, got {text[:80]!r}")
    return value
