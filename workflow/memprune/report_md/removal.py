"""Sections 2 and 3, does pruning remove it and does it stay removed: per config, the leaderboard's row per compared
model (leaderboard.csv) where it is built; else the evaluation's summary (eval_summary.csv), the extraction attack's
table (attack/table.csv) and the recovery table (recovery.csv)."""

from __future__ import annotations

import re

from memprune.report_md import cells
from memprune.report_md.sources import Stamp, Target

TITLE_REMOVED = "Does pruning remove it?"
INTRO_REMOVED = ("Copies: the share of held-out memorized prompts whose generations copy the prompt's training "
                 "image (the copy metric at its threshold in most seeds); *minus unedited*: the model's copies "
                 "minus the unedited model's on the same prompts and seeds, bold where its 95% interval excludes 0. "
                 "Prompt following and Frechet distance: on the non-memorized test prompts, and as ratios to the "
                 "unedited model's.")
TITLE_STAYS = "Does it stay removed?"
INTRO_STAYS = ("The extraction attack (Carlini et al.): of each kind's prompts (an edited model: those outside the "
               "subset its edit was made from), the share whose attack clique is the prompt's own training image, "
               "and the share whose clique is another training image. The recovery attack (Finding Dori): MR, the "
               "share of target photos that a searched prompt embedding brings back, from the prompt and from random "
               "starts, on the same targets for every model (a control group recovered is a false recovery). "
               "Differences from the unedited model are paired, bold where their 95% interval excludes 0.")
MR = re.compile(r"^mr_(prompt|unrelated|random)_(.+)$")


def read_rows(path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path).to_dict("records")


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(c for r in rows for c in r))


def metric_note(rows: list[dict]) -> str:
    """`copies: ssim >= 0.4` from the table's copy metric columns, where it has them."""
    first = rows[0] if rows else {}
    if not isinstance(first.get("copy_metric"), str) or not cells.finite(first.get("copy_threshold")):
        return ""
    return f"copies: {first['copy_metric']} >= {cells.number(first['copy_threshold']):g}"


def eval_table(rows: list[dict], copies: str, label, kind: str) -> list[str]:
    """One row per model with a value: copies (and minus unedited), each `fraction_over_<t>`, prompt following,
    Frechet distance, and the ratios to the unedited model. `copies`: the copy-rate column; `label(row)`."""
    over = cells.base_columns(_columns(rows), "fraction_over_")
    header = ["model", f"copies ({kind})" if kind else "copies", "minus unedited",
              *(f"images >= {c[len('fraction_over_'):]}" for c in over), "prompt following",
              "prompt following vs unedited", "Frechet distance", "Frechet vs unedited"]
    body = []
    for r in rows:
        if not (cells.finite(r.get(copies)) or cells.finite(r.get("prompt_following"))):
            continue
        body.append([label(r), cells.row_rate(r, copies), cells.row_difference(r, copies),
                     *(cells.row_rate(r, c) for c in over), cells.row_rate(r, "prompt_following"),
                     cells.ratio(r.get("prompt_following_vs_none")), cells.row_rate(r, "frechet_distance"),
                     cells.ratio(r.get("frechet_vs_none"))])
    return cells.table(header, body)


def _heading(t: Target) -> list[str]:
    return [f"### {t.name} ({t.label})", ""]


def section_removed(targets: list[Target], stamp: Stamp) -> list[str]:
    lines = [f"## 2. {TITLE_REMOVED}", "", INTRO_REMOVED, ""]
    for t in targets:
        lines += _heading(t)
        if t.has("leaderboard.csv"):
            rows = read_rows(t.path("leaderboard.csv"))
            kind = next((r["eval_kind"] for r in rows if isinstance(r.get("eval_kind"), str)), "")
            lines += [stamp(t, ["leaderboard.csv"], metric_note(rows)), "",
                      *eval_table(rows, "eval_copies", lambda r: cells.model_label(r["model"]), kind), ""]
        elif t.has("eval_summary.csv"):
            rows = read_rows(t.path("eval_summary.csv"))
            lines += [stamp(t, ["eval_summary.csv"]), "",
                      *eval_table(rows, "copy_rate", lambda r: cells.model_label(r["variant"], r.get("subset")), ""),
                      ""]
        else:
            lines += [t.missing("leaderboard.csv", "The evaluation"), ""]
    return lines


def attack_rows(rows: list[dict]) -> list[list[str]]:
    """The leaderboard's attack columns, one row per (model, kind) the attack covered."""
    columns = _columns(rows)
    kinds = [c[len("copies_"):] for c in cells.base_columns(columns, "copies_") if not c.startswith("copies_another_")]
    body = []
    for r in rows:
        for k in kinds:
            own, other = f"copies_{k}", f"copies_another_{k}"
            if not (cells.finite(r.get(own)) or cells.finite(r.get(other))):
                continue
            n = r.get(f"attack_prompts_{k}")
            body.append([cells.model_label(r["model"]), k, f"{int(n)}" if cells.finite(n) else "",
                         cells.row_rate(r, own), cells.row_difference(r, own), cells.row_rate(r, other)])
    return body


def recovery_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The leaderboard's MR columns: the starts, and one row per (model, group) recovery attacked."""
    found = [m.groups() for m in map(MR.match, cells.base_columns(_columns(rows), "mr_")) if m]
    inits, groups = list(dict.fromkeys(i for i, _ in found)), list(dict.fromkeys(g for _, g in found))
    body = []
    for r in rows:
        for g in groups:
            names = [f"mr_{i}_{g}" for i in inits]
            if not any(cells.finite(r.get(n)) for n in names):
                continue
            body.append([cells.model_label(r["model"]), g,
                         *(c for n in names for c in (cells.row_rate(r, n), cells.row_difference(r, n)))])
    return inits, body


def _mr_header(first: list[str], inits: list[str]) -> list[str]:
    return [*first, *(h for i in inits for h in (f"MR from {i}", f"MR from {i} minus unedited"))]


def table_csv_rows(rows: list[dict]) -> list[list[str]]:
    """attack/table.csv (per variant and kind, every prompt of the kind; shares in %)."""
    def share(r, name):
        pct = f"{name}_pct"
        return cells.rate(*(cells.number(r.get(c)) / 100 for c in (pct, f"{pct}_lo", f"{pct}_hi")))

    return [[cells.model_label(r["variant"]), str(r["group"]), f"{int(r['prompts'])}", share(r, "identified"),
             share(r, "actually_memorized"), share(r, "copies_another")] for r in rows]


def recovery_csv_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """recovery.csv (per variant, group, split and start) as one row per (variant, group, split)."""
    inits = list(dict.fromkeys(str(r["init"]) for r in rows))
    cells_of: dict[tuple, dict] = {}
    for r in rows:
        cells_of.setdefault((r["variant"], r["group"], r["split"]), {})[str(r["init"])] = r
    body = []
    for (variant, group, split), by_init in cells_of.items():
        first = by_init.get("prompt") or next(iter(by_init.values()))
        row = [cells.model_label(variant), str(group), str(split), f"{int(first['targets'])}",
               cells.row_rate(first, "copy_rate_original")]
        for i in inits:
            r = by_init.get(i, {})
            row += [cells.row_rate(r, "mr_recovered"), cells.row_difference(r, "mr_recovered")]
        body.append(row)
    return inits, body


def _recovery_enabled(t: Target) -> bool:
    from memprune.plan.compare import Recovery

    return Recovery(t.plan).enabled


NO_RECOVERY = "The recovery attack is not configured for this model (config key `recovery.targets`)."


def section_stays(targets: list[Target], stamp: Stamp) -> list[str]:
    lines = [f"## 3. {TITLE_STAYS}", "", INTRO_STAYS, ""]
    for t in targets:
        lines += _heading(t)
        if t.has("leaderboard.csv"):
            rows = read_rows(t.path("leaderboard.csv"))
            attack = attack_rows(rows)
            header = ["model", "kind", "prompts", "own image", "minus unedited", "another image"]
            lines += ([stamp(t, ["leaderboard.csv"], "the extraction attack"), "", *cells.table(header, attack), ""]
                      if attack else ["The leaderboard has no attack columns.", ""])
            inits, rec = recovery_rows(rows)
            if rec:
                lines += [stamp(t, ["leaderboard.csv"], "the recovery attack, every target of a group together"), "",
                          *cells.table(_mr_header(["model", "group"], inits), rec), ""]
            else:
                lines += [NO_RECOVERY if not _recovery_enabled(t) else "The leaderboard has no recovery columns.", ""]
            continue
        if not (t.has("attack/table.csv") or t.has("recovery.csv")):
            lines += [t.missing("leaderboard.csv", "The attacks"), ""]
            continue
        if t.has("attack/table.csv"):
            header = ["model", "kind", "prompts", "identified", "own image", "another image"]
            lines += [stamp(t, ["attack/table.csv"], "every prompt of each kind"), "",
                      *cells.table(header, table_csv_rows(read_rows(t.path("attack/table.csv")))), ""]
        else:
            lines += [t.missing("attack/table.csv", "The extraction attack"), ""]
        if not _recovery_enabled(t):
            lines += [NO_RECOVERY, ""]
        elif t.has("recovery.csv"):
            inits, rec = recovery_csv_rows(read_rows(t.path("recovery.csv")))
            header = _mr_header(["model", "group", "split", "targets", "copied from the prompt"], inits)
            lines += [stamp(t, ["recovery.csv"]), "", *cells.table(header, rec), ""]
        else:
            lines += [t.missing("recovery.csv", "The recovery attack"), ""]
    return lines
