"""The report's numbers and tables as Markdown, formatted as docs/results.md writes them: rates with their 95%
interval (`0.93 [0.81, 0.98]`), differences signed and bold where their interval excludes 0, ratios with 2
decimals, seconds with 1; an empty cell where a stage gave no value."""

from __future__ import annotations

import numpy as np

SUFFIXES = ("_lo", "_hi", "_minus_none", "_minus_none_lo", "_minus_none_hi", "_minus_none_excludes_zero")


def number(value) -> float:
    """A cell's value as a float (NaN for an empty or non-numeric one)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def finite(value) -> bool:
    return bool(np.isfinite(number(value)))


def _fixed(value: float, digits: int = 2, sign: bool = False) -> str:
    value = round(float(value), digits) or 0.0  # no "-0.00"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def rate(value, lo=None, hi=None) -> str:
    """`0.93 [0.81, 0.98]`; the value alone without an interval; empty without a value."""
    if not finite(value):
        return ""
    out = _fixed(number(value))
    return out + (f" [{_fixed(number(lo))}, {_fixed(number(hi))}]" if finite(lo) and finite(hi) else "")


def difference(value, lo, hi, excludes=None) -> str:
    """`-0.65 [-0.84, -0.44]`, bold where the interval excludes 0 (`excludes`; computed from the ends when the
    file has no `_excludes_zero`)."""
    from memprune.evaluate.intervals import excludes_zero

    if not finite(value):
        return ""
    if not (finite(lo) and finite(hi)):
        return _fixed(number(value), sign=True)
    known = excludes if isinstance(excludes, (bool, np.bool_)) else _flag(excludes)
    if known is None:
        known = excludes_zero(number(lo), number(hi))
    text = f"{_fixed(number(value), sign=True)} [{_fixed(number(lo), sign=True)}, {_fixed(number(hi), sign=True)}]"
    return f"**{text}**" if known else text


def _flag(value) -> bool | None:
    """A CSV's True / False (read by pandas as bool or str), None when empty."""
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower())
    return None if not finite(value) else bool(number(value))


def ratio(value) -> str:
    return _fixed(number(value)) if finite(value) else ""


def seconds(value) -> str:
    return _fixed(number(value), 1) if finite(value) else ""


def overlap(value) -> str:
    """An IOU: 2 decimals, 3 below 0.01 (random masks overlap by about their density)."""
    if not finite(value):
        return ""
    v = number(value)
    return _fixed(v, 3) if 0 < abs(v) < 0.01 else _fixed(v)


def percent(value) -> str:
    return f"{_fixed(100 * number(value))}%" if finite(value) else ""


def row_rate(row, name: str) -> str:
    """`rate` of the column `name` of a table row (a mapping), with its `_lo` / `_hi` where present."""
    return rate(row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi"))


def row_difference(row, name: str) -> str:
    """`difference` of `<name>_minus_none` of a table row, with its interval and `_excludes_zero` where present."""
    d = f"{name}_minus_none"
    return difference(row.get(d), row.get(f"{d}_lo"), row.get(f"{d}_hi"), row.get(f"{d}_excludes_zero"))


def base_columns(columns, prefix: str) -> list[str]:
    """The columns named `<prefix><name>` that hold values (not an interval's end, nor a difference), in order."""
    return [c for c in columns if c.startswith(prefix) and not c.endswith(SUFFIXES)]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (a `|` inside a cell escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def model_label(model_id, subset=None) -> str:
    """A compared model's name in the tables, from its id (`none`, `pruned:<localizer>|<collection>/<i>`, `wen`,
    ...) or an eval summary's variant id and subset (`pruned:wanda` and `mean`)."""
    model_id = str(model_id)
    if model_id == "none":
        return "unedited"
    base, _, sub = model_id.partition("|")
    variant, _, method = base.partition(":")
    name = (method if variant == "pruned" else f"{variant} {method}") if method else variant
    sub = sub or (subset if isinstance(subset, str) else "")
    if sub in ("", "all"):
        return name
    return f"{name}, mean over subsets" if sub == "mean" else f"{name}, {sub}"
