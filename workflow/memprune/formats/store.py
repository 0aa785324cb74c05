"""Artifact I/O: every output is written to a temporary sibling path and renamed into place, so a killed job
leaves either the complete artifact or nothing a rerun or reader would accept. The next write of the same path on
the same host removes what a killed writer left there."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Remove the temporaries of `path` that a killed writer on this host left: their names carry the host and
    pid of the writer (`.<name>.tmp-<host>-<pid>-<random>`), and that pid no longer runs. A temporary of a writer on
    another host (a cluster node), of a live process, or without that stamp is left alone."""
    host = socket.gethostname()
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        stamp = sibling.name[len(f".{path.name}.tmp-"):].rsplit("-", 2)
        if len(stamp) != 3 or stamp[0] != host or not stamp[1].isdigit():
            continue
        pid = int(stamp[1])
        if pid != os.getpid() and not _owner_alive(pid):
            with contextlib.suppress(OSError):
                _remove(sibling)


def _umask() -> int:
    """The process's umask, read without changing it where the kernel says it (Linux), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    prefix = f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp / mkdtemp make the temporary private (0600 / 0700); the artifact gets the mode a plain open() or
    # mkdir() would give it, so a group sharing `results/` on a cluster can read it.
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())
    return tmp


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target` by rename."""
    target = Path(target)
    tmp = _tmp_sibling(target, is_dir=True)
    try:
        yield tmp
        aside = []
        while True:
            try:
                os.replace(tmp, target)
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
            # A directory cannot be renamed over a non-empty one: move the old one aside, then try again (another
            # writer of the same path may have moved it first, or put its own in place meanwhile).
            old = _tmp_sibling(target, is_dir=True)
            old.rmdir()
            try:
                os.replace(target, old)
                aside.append(old)
            except FileNotFoundError:
                pass
        for old in aside:
            _remove(old)
        _fsync_dir(target.parent)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(target: Path | str) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; on success it is renamed onto `target`."""
    target = Path(target)
    tmp = _tmp_sibling(target, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_text(target: Path | str, text: str) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_netcdf(ds, target: Path | str, encoding: dict | None = None) -> None:
    """Write an xarray Dataset as netCDF4 (h5netcdf backend; `encoding` per variable, e.g. compression),
    atomically."""
    with atomic_file(target) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)


def open_netcdfs(paths: list[Path | str], drop: list[str] = ()):
    """netCDF files (of one kind, e.g. chunks of prompts) loaded and concatenated along "prompt", without the
    variables in `drop`."""
    import xarray as xr

    parts = [xr.open_dataset(p, engine="h5netcdf").drop_vars(list(drop)).load() for p in paths]
    return xr.concat(parts, dim="prompt") if len(parts) > 1 else parts[0]


def write_zarr(ds, target: Path | str) -> None:
    """Write an xarray Dataset as a zarr v3 store (arrays carry `dimension_names`), atomically, with consolidated
    metadata: `xr.open_zarr(path)` then opens it without listing the directory, so it neither warns about
    non-consolidated metadata nor about files Snakemake puts in its outputs (`.snakemake_timestamp`)."""
    import warnings

    with atomic_dir(target) as tmp, warnings.catch_warnings():
        # zarr 3 warns that consolidated metadata is not (yet) in the v3 spec; xarray and zarr-python read it
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)


def open_zarr(path: Path | str, load: bool = True):
    import xarray as xr

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"{path}: not a zarr v3 store (no zarr.json)")
    ds = xr.open_zarr(path, consolidated=True, zarr_format=3)
    return ds.load() if load else ds
