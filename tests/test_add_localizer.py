"""Adding a localizer is one module (docs/methods.md, "Adding a localizer"): its defaults and the descriptions of
its parameters live in the module, the config check makes its config entry from them (errors name the module
file), the plan takes its defaults from it, and the Snakefile plans with the package of its own checkout, so a
module dropped into a second checkout runs through masks and results/iou.nc while the installed memprune is
another checkout's."""

import copy
import dataclasses
import importlib.util
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, WORKFLOW_COLLECTIONS, WORKFLOW_SETS, write_config
from memprune import localize
from memprune.errors import InputError
from memprune.plan import lay_out_clone
from memprune.plan.schema import load_schema, validate_config

EXAMPLE = REPO / "workflow/examples/wanda_no_null.py"
BASE = {"model": {"name": "m", "path": "resources/testbed"},
        "prompt_sets": {"memorized": "resources/prompts/testbed/duplicated.txt"},
        "collections": {"mem": {"set": "memorized", "n_subsets": 2, "size": 5}}}
ADDED = {"wanda_no_null": None, "wnn_10": {"localizer": "wanda_no_null", "sparsity": 0.1}}


def load_example():
    spec = importlib.util.spec_from_file_location("memprune_example_wanda_no_null", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def registered():
    """Register localizers from outside the package for one test (as a module in localize/ would be)."""
    added = []

    def register(loc):
        added.append(loc.name)
        return localize.register(loc)

    yield register
    for name in added:
        localize._REGISTRY.entries.pop(name, None)


@pytest.fixture
def example(registered):
    return registered(load_example().LOCALIZER)


def plan_of(**sections):
    from memprune.plan.config import Plan

    return Plan(validate_config({**copy.deepcopy(BASE), **sections}), REPO)


def error_of(**sections) -> str:
    with pytest.raises(InputError) as err:
        plan_of(**sections)
    return str(err.value)


def test_a_module_without_a_schema_entry_gets_its_defaults_from_the_module(example):
    methods = plan_of(localizers=ADDED).methods
    assert methods["wanda_no_null"].params == {"sparsity": 0.01, "tau": 10}  # the module's defaults
    assert methods["wnn_10"].params == {"sparsity": 0.1, "tau": 10} and methods["wnn_10"].localizer == "wanda_no_null"
    methods = plan_of(localizers=ADDED, masks={"tau": 4, "sparsity": 0.2}).methods  # the shared keys, when set
    assert methods["wanda_no_null"].params == {"sparsity": 0.2, "tau": 4}
    assert methods["wnn_10"].params == {"sparsity": 0.1, "tau": 4}  # the entry's own over them
    entry = load_schema()["properties"]["localizers"]["properties"]["wanda_no_null"]
    assert entry["description"].endswith("(workflow/examples/wanda_no_null.py)")
    sparsity = entry["properties"]["sparsity"]
    assert sparsity["description"] == ("share of each row's input features selected per step; default: masks.sparsity "
                                       "when set, else 0.01")
    assert sparsity["type"] == "number" and sparsity["maximum"] == 1  # the shared key's constraints
    assert "default" not in sparsity  # no default written into the config: the plan takes the module's


def test_config_errors_name_the_module_file_its_known_keys_and_the_fix(example):
    assert error_of(localizers={"wanda_no_null": {"sparsty": 0.1}}) == (
        "config key localizers.wanda_no_null.sparsty: unknown parameter 'sparsty' (did you mean 'sparsity'?); "
        "known: sparsity, tau (localizer wanda_no_null's defaults= in workflow/examples/wanda_no_null.py: set one "
        "of these, or add the parameter there with its description in param_docs=)")
    assert error_of(localizers={"w": {"localizer": "wanda_no_null", "tau": 2.5}}) == (
        "config key localizers.w.tau: 2.5 is not of type 'integer'")
    assert error_of(localizers={"wanda_no_null": {"sparsity": 2}}) == (
        "config key localizers.wanda_no_null.sparsity: 2 is greater than the maximum of 1")


def test_mistakes_in_a_module_stop_the_check_naming_its_file():
    def locate(inputs, params):
        return None

    with pytest.raises(InputError, match=r"localizer 'mine' \(tests/test_add_localizer.py\): every parameter has a "
                                         r"default .*without a description: \['k'\], without a default: \['x'\]"):
        localize.Localizer("mine", "d", locate, defaults={"k": 1}, param_docs={"x": "an x"})
    with pytest.raises(InputError, match=r"unknown statistics \['grads'\]; capture records \['ffn_input_sumsq'\]"):
        localize.Localizer("mine", "d", locate, statistics=("grads",))
    with pytest.raises(InputError, match="a name is letters, digits and _"):
        localize.Localizer("my/loc", "d", locate)


def _package(root, name, modules: dict) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, text in modules.items():
        (root / name / f"{module}.py").write_text(text)


def test_the_registry_names_the_module_files_of_a_broken_or_duplicate_plug_in(tmp_path, monkeypatch):
    from memprune.registry import Registry

    entry = ("from memprune.localize import Localizer\n\n\ndef locate(inputs, params):\n    return None\n\n\n"
             "LOCALIZER = Localizer(name='dup', description='d', locate=locate)\n")
    _package(tmp_path, "plugs_dup", {"a": entry, "b": entry})
    _package(tmp_path, "plugs_broken", {"c": "raise RuntimeError('boom')\n"})
    _package(tmp_path, "plugs_wrong", {"d": "LOCALIZER = {'name': 'x'}\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {"plugs_dup": r"two localizer modules define 'dup': \S*plugs_dup/a.py and \S*plugs_dup/b.py; rename one",
             "plugs_broken": r"localizer module \S*plugs_broken/c.py failed to import: RuntimeError: boom",
             "plugs_wrong": r"plugs_wrong/d.py: LOCALIZER is a dict, not a Localizer"}
    for package, message in cases.items():
        with pytest.raises(InputError, match=message):
            Registry(package, "LOCALIZER", "localizer", localize.Localizer).names()


def test_the_plan_needs_a_localizer_with_per_timestep_masks_whatever_the_order(example, registered):
    registered(dataclasses.replace(example, name="flat", uses_timesteps=False))
    assert "none of ['flat'] gives per-timestep masks" in error_of(localizers={"flat": {}})
    assert list(plan_of(localizers={"flat": {}, "wanda_no_null": {}}).methods) == ["flat", "wanda_no_null"]


def test_the_example_is_wanda_when_the_null_prompt_is_silent_and_contains_it_otherwise():
    import torch

    from memprune.localize.wanda import LOCALIZER as wanda
    from memprune.localize.wanda_packed import unpack

    rng = np.random.default_rng(0)
    weights = {"a": torch.from_numpy(rng.normal(size=(12, 40))).float(),
               "b": torch.from_numpy(rng.normal(size=(6, 24))).float()}
    memorized = {k: rng.random((4, w.shape[1])) + 0.1 for k, w in weights.items()}
    params = {"sparsity": 0.2, "tau": 3}
    example = load_example().LOCALIZER
    for null, same in (({k: np.zeros_like(v) for k, v in memorized.items()}, True),
                       ({k: rng.random(v.shape) for k, v in memorized.items()}, False)):
        inputs = localize.Inputs(weights=weights, n_prompts=3, memorized=memorized, null=null,
                                 steps=np.arange(4), t=np.arange(4)[::-1])
        ours, theirs = example.locate(inputs, params), wanda.locate(inputs, params)
        for layer, w in weights.items():
            n = w.shape[1]
            a, b = unpack(ours.per_step[layer], n), unpack(theirs.per_step[layer], n)
            assert (a == b).all() if same else ((b <= a).all() and (b < a).any())
            assert (a.sum(-1) == int(0.2 * n)).all()  # k per row at every step
            assert (unpack(ours.union[layer], n) == a[:3].any(0)).all()


def test_the_docs_show_the_example_module_and_each_modules_parameters():
    text = (REPO / "docs/methods.md").read_text()
    howto = text[text.index("### Adding a localizer"):]
    assert re.search(r"```python\n(.*?)```", howto, flags=re.S).group(1) == EXAMPLE.read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `(\w+)` \|", line)
        if m and m.group(1) in localize.names():
            rows[m.group(1)] = line.rstrip(" |").rsplit(" | ", 1)[-1]
    assert sorted(rows) == localize.names()
    for name, cell in rows.items():
        defaults = localize.get(name).defaults
        shown = re.findall(r"`(\w+)`(?: \(([^)]*)\))?", cell)
        assert {key for key, _ in shown} == set(defaults), name  # every parameter, no other
        for key, value in shown:
            default = defaults[key]
            if value and isinstance(default, (int, float)):
                assert float(value) == default, (name, key)
            elif value:
                assert value == (", ".join(default) if isinstance(default, list) else default), (name, key)


def test_the_snakefile_puts_its_checkout_first_on_sys_path_before_importing_memprune():
    text = (REPO / "Snakefile").read_text()
    first_import = re.search(r"^(import memprune|from memprune)", text, flags=re.M).start()
    assert 'CHECKOUT_PACKAGE = os.path.join(workflow.basedir, "workflow")' in text
    assert text.index("sys.path.insert(0, CHECKOUT_PACKAGE)") < first_import
    assert "(CHECKOUT_PACKAGE, os.environ.get(\"PYTHONPATH\"))" in text  # the jobs: the same package first


def second_checkout(root):
    """A checkout beside the installed one: the repository's tree linked, its `workflow/` (the package) copied."""
    lay_out_clone(REPO, root)
    (root / "workflow").unlink()
    shutil.copytree(REPO / "workflow", root / "workflow", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return root


def snakemake(checkout, wd, *args):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(checkout / "Snakefile"), "--directory", str(wd),
           "--configfile", str(wd / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.slow
def test_a_module_dropped_into_a_second_checkout_runs_through_masks_to_iou(tiny_model, tmp_path):
    import xarray as xr

    from memprune.formats.masks import read_mask_set

    checkout = second_checkout(tmp_path / "checkout")
    shutil.copy(EXAMPLE, checkout / "workflow/memprune/localize/")  # the docs' `cp`
    wd = tmp_path / "wd"
    wd.mkdir()
    write_config(wd, tiny_model, WORKFLOW_SETS, WORKFLOW_COLLECTIONS, localizers=ADDED)
    installed = snakemake(REPO, wd, "-n", "results/iou.nc")  # the installed package's checkout lacks the module
    assert installed.returncode != 0 and "unknown localizer 'wanda_no_null'" in installed.stdout + installed.stderr

    proc = snakemake(checkout, wd, "results/iou.nc")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    iou = xr.open_dataset(wd / "results/iou.nc", engine="h5netcdf")
    assert list(iou.localizer.values) == ["wanda_no_null", "wnn_10"] and iou.sizes["step"] == 6
    found = iou.iou.sel(localizer="wanda_no_null", collection="m5", mask_type="found", subset_i=0, subset_j=0)
    assert np.all(found.values == 1.0)
    for name, sparsity in (("wanda_no_null", 0.05), ("wnn_10", 0.1)):  # masks.sparsity / its own; masks.tau
        stores = sorted(wd.glob(f"results/tiny/masks/{name}/*/m5/*.zarr"))
        assert len(stores) == 3
        ms = read_mask_set(stores[0])
        assert ms.attrs["method"] == "wanda_no_null" and ms.attrs["params"] == {"sparsity": sparsity, "tau": 3}
        assert ms.per_step is not None and len(ms.steps) == 6

    flat = tmp_path / "flat"  # the per-timestep check stops the dry run, naming the fix
    flat.mkdir()
    write_config(flat, tiny_model, WORKFLOW_SETS, WORKFLOW_COLLECTIONS, localizers={"magnitude": {}})
    dry = snakemake(checkout, flat, "-n", "results/iou.nc")
    assert dry.returncode != 0 and "gives per-timestep masks" in dry.stdout + dry.stderr
