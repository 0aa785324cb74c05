"""The layout shows the architecture: no module over 400 lines, imports run one way (no cycle, counting imports
inside functions), rules/common.smk is wiring (under 150 lines), the package never imports Snakemake."""

import ast
from pathlib import Path

import networkx as nx

from conftest import REPO

PACKAGE = REPO / "workflow" / "memprune"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for name, path in modules.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = node.module or ""
                full = f"{base}.{mod}".strip(".") if node.level else mod
                targets = [full] + [f"{full}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
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
