"""Property-based checks of the input parsers (prompt files, configs) and of safe loading.

The mask rule's invariants (density <= sparsity, masks only where memorized > null, union monotone in tau,
the fast path equal to the readable rule) are in test_scores.py; IOU symmetry and 1 on identical masks in
test_overlap.py.
"""

import copy
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from memprune.errors import InputError
from memprune.formats.prompts import read_prompts

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.text(max_size=30), st.just(""), st.just("{\"caption\": \"x\"}"),
                       st.just("caption,other"), st.just("{bad json"), st.just("[1, 2]")), max_size=8)
    .map(lambda lines: "\n".join(lines).encode("utf-8")),
), suffix=st.sampled_from([".txt", ".jsonl", ".csv"]))
def test_prompt_parser_returns_clean_prompts_or_names_the_file(tmp_path, content, suffix):
    """Any bytes: either a non-empty list of unique, stripped, non-empty prompts, or an InputError whose
    message starts with the file's path (and a line number where one applies). Never another exception."""
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(content)
    try:
        prompts = read_prompts(path)
    except InputError as e:
        assert str(e).startswith(str(path)), str(e)
        return
    assert prompts and len(set(prompts)) == len(prompts)
    assert all(p and p == p.strip() for p in prompts)


def _leaves(cfg, prefix=()):
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


LEAVES = [path for path, _ in _leaves(DEFAULT) if path[0] not in ("prompt_sets", "collections")]
# keys named by the user (localizer names of evaluate.max_subsets): the plan refuses unknown ones (test_plan)
NAMED = {("evaluate", "max_subsets")}
KEYED = [p for p in LEAVES if p[:2] not in NAMED]


def _set(cfg, path, value):
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(LEAVES), bad=st.sampled_from([{"nested": 1}, [[1]], "not-a-number-or-bool-7x"]))
def test_config_with_a_wrong_type_is_refused_naming_the_key(path, bad):
    """The check the Snakefile runs (the schema, each localizer's entry made from its module) refuses it."""
    from memprune.plan.schema import validate_config

    original = dict(_leaves(DEFAULT))[path]
    if isinstance(bad, str) and (isinstance(original, str) or original is None):
        bad = {"nested": 1}  # a string where a string (or null) is allowed is not a type error
    cfg = copy.deepcopy(DEFAULT)
    _set(cfg, path, bad)
    with pytest.raises(InputError) as err:
        validate_config(cfg)
    assert path[-1] in str(err.value)


@settings(max_examples=40, deadline=None)
@given(path=st.sampled_from(KEYED), name=st.from_regex(r"[a-z]{3,10}_x", fullmatch=True))
def test_config_with_an_unknown_key_is_refused_naming_it(path, name):
    from memprune.plan.schema import validate_config

    cfg = copy.deepcopy(DEFAULT)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[name] = 1
    with pytest.raises(InputError) as err:
        validate_config(cfg)
    assert name in str(err.value)


UNSAFE = [
    (re.compile(r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"^\s*(import pickle|from pickle|import dill|import joblib)", re.M), "a pickle-based loader"),
    (re.compile(r"use_safetensors\s*=\s*False|weights_only\s*=\s*False|allow_pickle\s*=\s*True"), "pickle allowed"),
]


@pytest.mark.parametrize("source", sorted((REPO / "workflow/memprune").glob("*.py")), ids=lambda p: p.name)
def test_package_never_unpickles(source: Path):
    text = source.read_text()
    for pattern, what in UNSAFE:
        m = pattern.search(text)
        assert m is None, f"{source.name}: {what}: {text[max(0, m.start() - 40) : m.end() + 40]!r}"


def test_concurrent_atomic_writes_leave_one_complete_file(tmp_path):
    """Two writers of one path (as two jobs would be if a DAG were wrong) never interleave: each writes its own
    temporary sibling, and the final file is one complete version; no temporary file is left behind."""
    import threading

    from memprune.formats.store import atomic_dir, atomic_file

    target, folder = tmp_path / "out.bin", tmp_path / "out.zarr"
    payloads = [bytes([i]) * 200_000 for i in range(8)]

    def write(payload):
        with atomic_file(target) as tmp:
            tmp.write_bytes(payload)
        with atomic_dir(folder) as tmp:
            (tmp / "a").write_bytes(payload)
            (tmp / "b").write_bytes(payload)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads
    assert (folder / "a").read_bytes() == (folder / "b").read_bytes() and (folder / "a").read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.zarr"]


@pytest.mark.slow  # starts two Python processes
def test_a_killed_writers_temporary_is_removed_by_the_next_write_of_that_path(tmp_path):
    """A writer SIGKILLed inside atomic_file leaves its temporary (stamped with this host and its pid); the next
    write of the same path removes it. Temporaries of a live writer, of another host and of another path stay."""
    import signal
    import socket
    import subprocess
    import sys

    from memprune.formats.store import atomic_write_text

    target = tmp_path / "out.txt"
    code = ("import sys, time\nfrom memprune.formats.store import atomic_file\n"
            "with atomic_file(sys.argv[1]) as tmp:\n    tmp.write_text('partial')\n    print(tmp, flush=True)\n"
            "    time.sleep(600)\n")
    killed = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        killed_tmp, live_tmp = Path(killed.stdout.readline().strip()), Path(live.stdout.readline().strip())
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_tmp.exists() and killed_tmp.name.startswith(f".out.txt.tmp-{socket.gethostname()}-{killed.pid}-")
        elsewhere = tmp_path / f".out.txt.tmp-another-node-{killed.pid}-abc"  # a cluster node's writer
        other_path = tmp_path / f".other.txt.tmp-{socket.gethostname()}-{killed.pid}-abc"
        elsewhere.write_text("x")
        other_path.write_text("x")
        atomic_write_text(target, "complete")
        assert target.read_text() == "complete"
        assert not killed_tmp.exists() and live_tmp.exists() and elsewhere.exists() and other_path.exists()
    finally:
        live.kill()
        live.wait(timeout=30)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_a_plain_write_would(tmp_path, umask):
    """mkstemp / mkdtemp temporaries are private (0600 / 0700); the renamed artifact must get what open() / mkdir()
    give under the process's umask, so a group sharing results/ can read it."""
    import os
    import xarray as xr
    from memprune.formats.store import atomic_dir, atomic_file
    old = os.umask(umask)
    try:
        with atomic_file(tmp_path / "a.nc") as tmp:
            xr.Dataset({"x": ("i", [1.0, 2.0])}).to_netcdf(tmp)
        with atomic_dir(tmp_path / "b.zarr") as tmp:
            (tmp / "part").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.nc").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "b.zarr").stat().st_mode & 0o777 == 0o777 & ~umask
