"""The layout shows the architecture: no module over 400 lines and no class over 150, imports run one way (no
cycle, counting imports inside functions), rules/common.smk is wiring (under 150 lines), the package never imports
Snakemake, and what the Snakefile imports to plan loads no torch."""

import ast
from pathlib import Path

import networkx as nx

from conftest import REPO

PACKAGE = REPO / "workflow" / "memprune"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_targets(node, package: str) -> list[str]:
    """What an import statement in `package` names: modules, and `module.name` for each name it imports from one."""
    if isinstance(node, ast.ImportFrom):
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        mod = node.module or ""
        full = f"{base}.{mod}".strip(".") if node.level else mod
        return [full] + [f"{full}.{a.name}" for a in node.names]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for name, path in modules.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            for target in import_targets(node, package):
                if target in modules and target != name:
                    graph.add_edge(name, target)
    return graph


def test_no_import_cycle():
    graph = import_graph()
    # a package's __init__ is imported by its own submodules (e.g. `from . import Localizer`): not a cycle of design
    cycles = [c for c in nx.simple_cycles(graph)
              if not (len(c) == 2 and any(c[i].startswith(c[1 - i] + ".") for i in range(2)))]
    assert cycles == []
    assert graph.number_of_edges() > 30  # the parser sees the imports


def test_no_class_over_150_lines():
    """A class is one concern: the plan is split into its inputs, paths, jobs and commands (memprune.plan)."""
    classes = [(p, n) for p in PACKAGE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
               if isinstance(n, ast.ClassDef)]
    long = {f"{module_name(p)}.{n.name}": n.end_lineno - n.lineno + 1 for p, n in classes
            if n.end_lineno - n.lineno >= 150}
    assert len(classes) > 20  # the walk sees the classes
    assert long == {}


def test_no_module_over_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_common_smk_is_wiring():
    assert len((REPO / "rules/common.smk").read_text().splitlines()) < 150


def test_package_never_imports_snakemake():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(n.split(".")[0] == "snakemake" for n in names), path


HEAVY = {"torch", "diffusers", "transformers", "xarray", "pandas", "scipy", "zarr", "matplotlib", "h5netcdf"}


def module_level_imports(path: Path, package: str) -> set[str]:
    """What importing the module runs: its top-level imports (inside `if` blocks too, but for `if TYPE_CHECKING:`),
    not those inside functions."""
    found = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.handlers + node.orelse + node.finalbody)
            elif isinstance(node, ast.ExceptHandler):
                visit(node.body)
            else:
                found.update(import_targets(node, package))

    visit(ast.parse(path.read_text()).body)
    return found


def test_planning_a_dag_imports_no_torch():
    """What the Snakefile imports to plan a DAG (memprune.plan, and the localizer and variant plug-ins its config
    check discovers) loads no torch, diffusers or data library at import: every `snakemake` call, dry runs and each
    job a cluster executor starts, parses the Snakefile."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    roots = [m for m in modules if m.startswith(("memprune.plan.", "memprune.localize", "memprune.variants"))]
    roots += ["memprune.formats.prompts"]
    seen, heavy, todo = set(), {}, list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        path = modules[name]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in module_level_imports(path, package):
            parts = target.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # a module's packages run first
            if parts[0] in HEAVY:
                heavy.setdefault(name, set()).add(target)
    assert len(seen) > 20 and heavy == {}
