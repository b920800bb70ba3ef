"""The package's layout (docs/architecture.md): every module imports on its own, no import cycle,
no function over 80 lines and no file over 400 lines without a stated reason.

The import graph is built with ``ast`` from the source, so a cycle that only works because one
side imports inside a function is found too: such a function-level import hides a cycle rather
than removing it. Function-level imports that do not close a cycle (lazy imports of heavy or
optional parts, e.g. the CLI's commands) are fine.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maskdiff"

MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 400
# A file may be longer when its module docstring says why, with this phrase.
LONG_FILE_REASON = "longer than 400 lines because"

# Allow-lists: each entry names who is removing it. Keep them empty or near-empty; an entry that
# no longer violates the limit fails test_allow_lists_are_not_stale, so it is removed in time.
LONG_FUNCTIONS: dict[str, str] = {
}
LONG_FILES: dict[str, str] = {
}
# Function-level imports (importer, imported) that close a known cycle.
CYCLE_EDGES: dict[tuple[str, str], str] = {
}


def _sources() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _sources()


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.Module, in_function: bool = False):
    """``(node, inside_a_function)`` for every import statement that runs (not TYPE_CHECKING)."""
    def walk(node: ast.AST, inside: bool):
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, inside
            yield from walk(child, inside or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(tree, in_function)


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """The package modules an import statement executes first. ``from pkg import sub`` of a
    submodule depends on ``sub`` only: Python imports the package's ``__init__`` as a parent
    either way, so only a name defined *in* the ``__init__`` makes the ``__init__`` a target."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if MODULES[module].name == "__init__.py" else (
                module.split(".")[:-1])
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
        names = submodules | ({base} if len(submodules) < len(node.names) else set())
    return {name for name in names if name in MODULES and name != module}


def _graph(with_functions: bool) -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = set()
        for node, inside in _imports(tree):
            if with_functions or not inside:
                graph[module] |= _targets(node, module)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_module_level_imports_are_acyclic():
    assert _cycles(_graph(with_functions=False)) == []


def test_no_function_level_import_hides_a_cycle():
    graph, top_level = _graph(with_functions=True), _graph(with_functions=False)
    for importer, imported in CYCLE_EDGES:
        graph[importer].discard(imported)
    cycles = _cycles(graph)
    hiding = [(a, b) for cycle in cycles for a in cycle for b in sorted(graph[a])
              if b in cycle and b not in top_level[a]]
    assert cycles == [], f"import cycles {cycles}, closed by function-level imports {hiding}"


def test_cycle_allow_list_is_not_stale():
    graph = _graph(with_functions=True)
    cycles = _cycles(graph)
    for importer, imported in CYCLE_EDGES:
        assert imported in graph[importer], f"{importer} no longer imports {imported}: remove it"
        assert any(importer in c and imported in c for c in cycles), (
            f"{importer} -> {imported} closes no cycle any more: remove the entry and hoist the "
            f"imports that only dodged it")


# The layers of docs/architecture.md §2, lowest first: a module may import (at module level or
# inside a function) only from its own layer and the layers before it. The utilities import
# nothing of maskdiff; the package root only re-exports.
LAYERS = [
    {"fileio", "jobs", "jsonio", "memory", "plotting"},
    {"core"}, {"diagnostics"}, {"ppots"}, {"data", "models"}, {"training"}, {"preference"},
    {"hf"}, {"labs"},
    {"evaluation"}, {"experiments"}, {"commands", "cli"}, {"maskdiff"},
]


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "maskdiff"
    return next(rank for rank, names in enumerate(LAYERS) if top in names)


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _layer(module)  # StopIteration names a new top-level module missing from LAYERS


def test_no_layer_imports_a_later_one():
    upward = sorted(f"{module} -> {target}"
                    for module, targets in _graph(with_functions=True).items()
                    for target in targets if _layer(target) > _layer(module))
    assert upward == [], "imports against the layer order of docs/architecture.md §2: " + (
        ", ".join(upward))


def test_every_module_imports_alone():
    """Each module imported first, in one interpreter: heavy third-party packages are imported
    once up front, then every ``maskdiff`` module is dropped from ``sys.modules`` before the
    next one is imported, so no module can rely on another having been imported before it."""
    script = (
        "import importlib, sys, numpy, torch\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'maskdiff' or m.startswith('maskdiff.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *sorted(MODULES)], cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def _functions(tree: ast.Module):
    """``(qualified name, node)`` of every function, methods and nested functions included."""
    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                yield from walk(child, name + ".")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def _long_functions() -> dict[str, int]:
    found = {}
    for path in MODULES.values():
        for name, node in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found[f"{_rel(path)}::{name}"] = length
    return found


def _long_files() -> dict[str, int]:
    found = {}
    for path in MODULES.values():
        text = path.read_text(encoding="utf-8")
        n_lines = len(text.splitlines())
        reason = ast.get_docstring(ast.parse(text)) or ""
        if n_lines > MAX_FILE_LINES and LONG_FILE_REASON not in " ".join(reason.split()):
            found[_rel(path)] = n_lines
    return found


def test_no_function_over_80_lines():
    over = {k: v for k, v in _long_functions().items() if k not in LONG_FUNCTIONS}
    assert over == {}, f"functions over {MAX_FUNCTION_LINES} lines (split them by idea): {over}"


def test_no_file_over_400_lines_without_a_reason():
    over = {k: v for k, v in _long_files().items() if k not in LONG_FILES}
    assert over == {}, (f"files over {MAX_FILE_LINES} lines whose docstring does not say "
                        f"'{LONG_FILE_REASON} ...': {over}")


@pytest.mark.parametrize("allowed, measure", [(LONG_FUNCTIONS, _long_functions),
                                              (LONG_FILES, _long_files)])
def test_allow_lists_are_not_stale(allowed, measure):
    stale = sorted(set(allowed) - set(measure()))
    assert stale == [], f"within the limits now, remove from the allow-list: {stale}"
