"""The prompt files a config names, read when the plan is built exactly as their jobs read them, so that a bad
file (a repeated or empty prompt, bad JSON or CSV, not UTF-8, missing) stops `snakemake -n` with the error
naming the file and line, before any job runs.

The files and their readers: every `prompt_sets` file (`Plan`, `memprune.formats.prompts.read_prompts` as
every job reading a set), `collections.*.files` (`plan.subsets`, read by the plan alone), and the evaluation's
`evaluate.memorized` and `evaluate.nonmemorized` (`evaluation_prompts`: the eval-sample job's own
`memprune.evaluate.prompts.eval_prompts`, so a prompt in both files stops the plan too). Each file is read once
per process while unchanged (`read_prompt_file`): a set named again by the evaluation, or a plan built anew
(tests, `benchmarks/plan_time.py`), costs nothing.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from memprune.evaluate.prompts import eval_prompts
from memprune.formats.prompts import read_prompts


@lru_cache(maxsize=None)
def _read(path: str, stamp: tuple[int, int], allow_duplicates: bool) -> tuple[str, ...]:
    return tuple(read_prompts(Path(path), allow_duplicates=allow_duplicates))


def read_prompt_file(path: str | Path, allow_duplicates: bool = False) -> list[str]:
    """`read_prompts(path, allow_duplicates=...)` (the same prompts, the same errors naming `path` as given), read
    once per process while the file keeps its size and modification time."""
    try:
        st = os.stat(path)
    except OSError:  # missing: read_prompts says so, naming the file
        return read_prompts(Path(path), allow_duplicates=allow_duplicates)
    return list(_read(str(path), (st.st_size, st.st_mtime_ns), allow_duplicates))


def evaluation_prompts(memorized: str | None, max_memorized: int | None, nonmemorized: str | None,
                       max_nonmemorized: int | None) -> None:
    """Read the evaluation's prompt files as its jobs will (`eval_prompts`, same arguments). `memorized` None:
    none, or a detected set (its file exists once detection ran), so the non-memorized file is read alone."""
    if memorized:
        eval_prompts(memorized, max_memorized, nonmemorized, max_nonmemorized, read=read_prompt_file)
    elif nonmemorized:
        read_prompt_file(nonmemorized)
