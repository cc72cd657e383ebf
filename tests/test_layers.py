"""The package's layers, read from its imports (an AST scan, no module is run).

Subpackages, arrows only downward:

- the foundation (``errors``, ``metrics``, ``timing``, ``files``, ``marker``, ``run_files``):
  the standard library only;
- ``config``: the foundation; no torch, no Ray;
- ``core`` (one run): the foundation and config, torch; no Ray, Optuna, pandas, matplotlib;
- ``records`` (the study folder): the foundation and config; no Ray, no torch;
- ``study`` (Ray Tune and Optuna): everything below it, never the report;
- ``report``: records, config, core (model pictures load checkpoints); never Ray, never the
  study;
- the command line and the package's ``__init__`` sit on top.

Every import counts, those inside functions too (a lazy import is still an arrow), except
those under ``if TYPE_CHECKING:``. There are no import circles between modules.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FOUNDATION = {"errors", "metrics", "timing", "files", "marker", "run_files"}
TOP = {"__init__", "__main__", "cli", "commands"}
# layer -> the layers it may import (itself included).
MAY_IMPORT = {
    "foundation": {"foundation"},
    "config": {"foundation", "config"},
    "core": {"foundation", "config", "core"},
    "records": {"foundation", "config", "records"},
    "study": {"foundation", "config", "core", "records", "study"},
    "report": {"foundation", "config", "core", "records", "report"},
    "top": {"foundation", "config", "core", "records", "study", "report", "top"},
}
# layer -> third-party packages it must not import.
FORBIDDEN = {
    "foundation": {"torch", "torchvision", "ray", "optuna", "pandas", "matplotlib", "numpy"},
    "config": {"torch", "torchvision", "ray", "pandas", "matplotlib"},
    "core": {"ray", "optuna", "pandas", "matplotlib"},
    "records": {"torch", "torchvision", "ray", "matplotlib"},
    "study": {"matplotlib"},
    "report": {"ray"},
    "top": set(),
}


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"  # vae_study itself (its __init__)
    if len(parts) == 2 and parts[1] in FOUNDATION:
        return "foundation"
    if len(parts) == 2 and parts[1] in TOP:
        return "top"
    return parts[1]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports_of(path: Path, module: str, modules: set[str]) -> list[tuple[str, int]]:
    """(imported name, line) for each import in the file: a module of the package where it
    names one (``from vae_study.x import y`` is ``vae_study.x.y`` when that is a module),
    else the top-level name of a third-party package."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out = []
    package_of = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in modules else target, node.lineno))
    return out


def violations(package: Path) -> list[str]:
    """Every import that breaks the layering, one line each (file:line: what and why)."""
    files = sorted(package.rglob("*.py"))
    modules = {module_name(p, package) for p in files}
    found = []
    for path in files:
        me = module_name(path, package)
        mine = layer_of(me)
        for name, line in imports_of(path, me, modules):
            where = f"{path.relative_to(package.parent)}:{line}"
            if name.split(".")[0] == package.name:
                theirs = layer_of(_owning_module(name, modules))
                if theirs not in MAY_IMPORT[mine]:
                    found.append(f"{where}: {mine} imports {name} ({theirs}), an upward arrow")
            elif name.split(".")[0] in FORBIDDEN[mine]:
                found.append(f"{where}: {mine} imports {name.split('.')[0]}")
    return found


def _owning_module(name: str, modules: set[str]) -> str:
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def import_cycles(package: Path) -> list[list[str]]:
    """Circles among the package's modules (each found once), imports in functions included;
    a subpackage's ``__init__`` re-exporting its own modules is not an arrow back."""
    files = sorted(package.rglob("*.py"))
    modules = {module_name(p, package) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        me = module_name(path, package)
        deps = set()
        for name, _ in imports_of(path, me, modules):
            if name.split(".")[0] == package.name:
                dep = _owning_module(name, modules)
                if dep != me and not (path.name == "__init__.py" or dep.startswith(me + ".")):
                    deps.add(dep)
        graph[me] = deps
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_every_import_points_down_a_layer():
    assert violations(REPO / "vae_study") == []


def test_there_are_no_import_circles():
    assert import_cycles(REPO / "vae_study") == []


def test_each_module_sits_in_a_known_layer():
    package = REPO / "vae_study"
    layers = {layer_of(module_name(p, package)) for p in package.rglob("*.py")}
    assert layers == set(MAY_IMPORT)


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "vae_study"
    shutil.copytree(REPO / "vae_study", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n\ndef _added():\n    {line}\n")


def test_an_upward_import_added_anywhere_is_caught(tmp_path):
    package = _copy(tmp_path)
    _append(package / "core" / "model.py", "from vae_study.study import driver")
    _append(package / "records" / "results.py", "import torch")
    _append(package / "records" / "layout.py", "import ray.tune")
    _append(
        package / "report" / "rd_plane.py", "from vae_study.study.confirm import run_confirmation"
    )
    _append(package / "config" / "run.py", "from ..core import model")
    found = violations(package)
    assert len(found) == 5, found
    assert any("vae_study/core/model.py" in f and "vae_study.study.driver" in f for f in found)
    assert any("records/results.py" in f and "imports torch" in f for f in found)
    assert any("records/layout.py" in f and "imports ray" in f for f in found)
    assert any("report/rd_plane.py" in f and "(study)" in f for f in found)
    assert any("config/run.py" in f and "vae_study.core.model (core)" in f for f in found)


def test_a_circle_added_is_caught(tmp_path):
    package = _copy(tmp_path)
    _append(package / "records" / "layout.py", "from vae_study.records import results")
    cycles = import_cycles(package)
    assert any({"vae_study.records.layout", "vae_study.records.results"} <= set(c) for c in cycles)


def test_an_import_only_for_type_checking_is_no_arrow(tmp_path):
    package = _copy(tmp_path)
    path = package / "records" / "pareto.py"
    path.write_text(
        path.read_text()
        + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import torch\n"
    )
    assert violations(package) == []
