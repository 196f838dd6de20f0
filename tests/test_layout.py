"""The floors of the house (docs/ARCHITECTURE.md), read from the code's imports with ast (nothing is imported).

    base     comet/core/                                  configs, routing, ownership, policy, plan, planner,
                                                          weights, reference, events
    engines  sim/, kernels/                               the two consumers of the Plan, each on the base only
    combined comet/layer/, comet/tuning/, comet/calibrate/, comet/__init__.py
    scripts  experiments/, benchmarks/, paper_figures/, every __main__.py

A module may import its own floor (no loops) and the floors below it, never above; sim/ and kernels/ never
import each other. A function-level import of a project module is allowed only where it defers something
heavy or optional, with a comment on that line saying so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("comet", "sim", "kernels")
PROJECT = (*PACKAGES, "experiments", "benchmarks", "paper_figures")
RANK = {"base": 0, "sim": 1, "kernels": 1, "combined": 2, "scripts": 3}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor(module: str, path: Path | None = None) -> str:
    if path is not None and path.name == "__main__.py":
        return "scripts"
    top = module.split(".")[0]
    if top in ("experiments", "benchmarks", "paper_figures"):
        return "scripts"
    if module == "comet.core" or module.startswith("comet.core."):
        return "base"
    if top in ("sim", "kernels"):
        return top
    return "combined"


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in PACKAGES for p in sorted((REPO / top).rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported module, line, at function level, the source line) for every import of a project module."""
    source = path.read_text()
    lines = source.splitlines()
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            for name in names:
                if name.split(".")[0] in PROJECT:
                    out.append((name, child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, inner)

    visit(ast.parse(source), False)
    return out


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lands in (`from a.b import c` may name module a.b.c or a name in a.b)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def edges() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for name, _, _, _ in imports(path):
            target = resolve(name, modules)
            if target and target != mod:
                graph[mod].add(target)
    return graph


def test_no_import_loops():
    graph = edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if n.rpartition(".")[0] == m or m.rpartition(".")[0] == n:  # a package and its own modules
                continue
            if state.get(n) == 1:
                raise AssertionError("import loop: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)


def test_floors_import_only_downwards():
    modules = project_modules()
    bad = []
    for mod, path in modules.items():
        here = floor(mod, path)
        for name, line, _, _ in imports(path):
            target = resolve(name, modules) or name
            there = floor(target, modules.get(target))
            if {here, there} == {"sim", "kernels"}:
                bad.append(f"{path.relative_to(REPO)}:{line}: {here} imports {there} ({target}): sim/ and kernels/ "
                           f"stand side by side on the base")
            elif RANK[there] > RANK[here]:
                bad.append(f"{path.relative_to(REPO)}:{line}: the {here} floor imports the {there} floor ({target})")
    assert not bad, "\n".join(bad)


def test_base_floor_imports_neither_sim_nor_kernels():
    for mod, path in project_modules().items():
        if floor(mod, path) == "base":
            for name, line, _, _ in imports(path):
                assert name.split(".")[0] not in ("sim", "kernels"), f"{path.relative_to(REPO)}:{line} imports {name}"


def test_function_level_imports_say_why():
    """A project import inside a function is a deferral of something heavy or optional, and says so."""
    unexplained = [f"{p.relative_to(REPO)}:{line}: {src.strip()}" for p in project_modules().values()
                   for _, line, in_function, src in imports(p) if in_function and "#" not in src]
    assert not unexplained, "function-level imports without a reason:\n" + "\n".join(unexplained)


@pytest.mark.parametrize("top", PACKAGES)
def test_modules_stay_small(top):
    """~500 lines at most, unless the module holds one kernel that needs the room and says so at its top."""
    long = []
    for path in sorted((REPO / top).rglob("*.py")):
        n = len(path.read_text().splitlines())
        head = "\n".join(path.read_text().splitlines()[:40])
        if n > 520 and "one kernel" not in head.lower():
            long.append(f"{path.relative_to(REPO)}: {n} lines")
    assert not long, "\n".join(long)


def test_the_checker_sees_a_loop_and_an_upward_import(tmp_path):
    """The rules above can fail: a made-up upward import is caught by `floor`, a made-up loop by the search."""
    assert RANK[floor("comet.layer.comet_moe")] > RANK[floor("sim.run")] > RANK[floor("comet.core.plan")]
    assert floor("sim.__main__", REPO / "sim" / "__main__.py") == "scripts"
    src = tmp_path / "m.py"
    src.write_text("import sim.run\n\ndef f():\n    from kernels import moe\n")
    assert [(n, f) for n, _, f, _ in imports(src)] == [("sim.run", False), ("kernels", True), ("kernels.moe", True)]
