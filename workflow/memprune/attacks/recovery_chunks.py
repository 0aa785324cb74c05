"""The recovery attack cut into jobs (config `chunks.recovery`): each job attacks a run of the targets (`recover
--chunk K:N`) after skipping the random draws of the targets before it, and `recovery-merge` joins a model's runs
into the file one job over every target writes."""

from __future__ import annotations

import re
from pathlib import Path

from memprune.errors import InputError

EMPTY = "empty_chunk"  # the attribute of a run past the last target (a prompt set with fewer photos than planned)
PER_CHUNK = ("searches_from",)  # attributes that name the chunk's own inputs


def write_empty_chunk(out: str | Path, variant_id: str) -> None:
    import xarray as xr

    from memprune.formats.store import write_netcdf

    write_netcdf(xr.Dataset(attrs={EMPTY: 1, "variant": variant_id}), out)


def merge(chunks: list[str | Path], out: str | Path) -> int:
    """One recovery file from a model's chunk files, in target order; returns the number of targets."""
    import numpy as np
    import xarray as xr

    from memprune.formats.store import write_netcdf

    loaded = [xr.load_dataset(c) for c in chunks]
    parts = [ds for ds in loaded if not ds.attrs.get(EMPTY)]
    if not parts:
        raise InputError(f"recovery-merge: no targets in any of {[str(c) for c in chunks]}")
    strings = [k for k in parts[0].variables if parts[0][k].dtype.kind in "OU"]
    parts = [ds.assign({k: ds[k].astype(object) for k in strings}) for ds in parts]  # variable-length, as written
    for path, ds in zip(chunks, parts):
        differ = [k for k in ds.attrs if k not in PER_CHUNK and str(ds.attrs[k]) != str(parts[0].attrs.get(k))]
        if differ:
            raise InputError(f"{path}: its {', '.join(differ)} differ from the first chunk's: rerun it")
    merged = xr.concat(parts, dim="target", data_vars="minimal", coords="minimal", compat="override",
                       combine_attrs="override")
    if not np.array_equal(merged.target.values, np.arange(merged.sizes["target"])):
        raise InputError(f"recovery-merge: the chunks do not hold targets 0..n-1 once each: {[str(c) for c in chunks]}")
    for key in PER_CHUNK:  # a chunk's reused searches came from the same chunk of the unedited model's file
        if merged.attrs.get(key):
            merged.attrs[key] = re.sub(r"/chunk\d+\.nc$", ".nc", str(merged.attrs[key]))
    write_netcdf(merged, out)
    return int(merged.sizes["target"])


def add_merge_argument(sub) -> None:
    import json

    p = sub.add_parser("recovery-merge", help="join a model's recovery chunk files (recover --chunk) into one")
    p.add_argument("--chunks", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=lambda args: print(json.dumps({"targets": merge(args.chunks, args.out)})))
