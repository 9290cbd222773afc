"""The package's shape: no import cycle, every module importable first, small modules.

The import graph is read from the source with ``ast``: every ``import`` and ``from ...
import`` anywhere in a module (a function-level import is a dependency too), except those
under ``if TYPE_CHECKING:``, plus the names a package ``__init__`` exports lazily through
an ``_EXPORTS = {"name": "module"}`` table. ``from pkg import x`` counts as importing
``pkg.x`` when that is a module, else ``pkg``. A second test imports each module first, in
a fresh interpreter, which catches what a static graph cannot (an ``__init__`` whose
eager imports make the order of imports matter).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pixbatch"

# every module is held to the size limits (the restructuring issue: ~600 lines, ~300 per class)
SIZE_CHECKED = ("**/*.py",)
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__main__.py"}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.append(child)
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the pixbatch modules it imports."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text("utf-8"), str(path))
        deps: set[str] = set()
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = here.split(".")
                    base = base[:len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            for t in targets:
                while t and t not in mods:  # "pixbatch.x.y" where y is not a module: its package
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        if is_package:  # lazy exports: {"name": "submodule"}
            for stmt in tree.body:
                if (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in stmt.targets)
                        and isinstance(stmt.value, ast.Dict)):
                    for v in stmt.value.values:
                        if isinstance(v, ast.Constant) and f"{name}.{v.value}" in mods:
                            deps.add(f"{name}.{v.value}")
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := dfs(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := dfs(n)):
            return found
    return None


def test_the_graph_reader_sees_relative_lazy_and_function_level_imports():
    g = import_graph()
    assert {"pixbatch.manifest.model", "pixbatch.manifest.templates", "pixbatch.items"} <= g["pixbatch.expand"]
    assert "pixbatch.expand" in g["pixbatch.manifest.names"]
    assert "pixbatch.manifest.load" in g["pixbatch.manifest"]  # through _EXPORTS
    assert "pixbatch.manifest" in g["pixbatch.cli"]  # inside a command function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_pixbatch():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_expand_reads_only_the_lower_layer_of_the_manifest_package():
    allowed = {"pixbatch.manifest.model", "pixbatch.manifest.sources", "pixbatch.manifest.templates",
               "pixbatch.manifest.problems"}
    used = {m for m in import_graph()["pixbatch.expand"] if m.startswith("pixbatch.manifest")}
    assert used <= allowed


def test_every_module_can_be_imported_first():
    script = textwrap.dedent("""
        import importlib, sys
        failed = []
        for name in sys.argv[1:]:
            for k in [k for k in sys.modules if k == "pixbatch" or k.startswith("pixbatch.")]:
                del sys.modules[k]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{name}: {exc!r}")
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
    """)
    done = subprocess.run([sys.executable, "-c", script, *modules()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _size_checked() -> list[Path]:
    return sorted({p for pattern in SIZE_CHECKED for p in PACKAGE.glob(pattern)})


@pytest.mark.parametrize("path", _size_checked(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_small(path):
    text = path.read_text("utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, node.name


def test_the_manifest_package_exports_what_it_declares():
    import pixbatch.manifest as pm

    assert pm.__all__ == sorted(pm._EXPORTS)
    for name in pm.__all__:
        assert getattr(pm, name) is not None
    tree = ast.parse((PACKAGE / "manifest" / "__init__.py").read_text("utf-8"))
    typed = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
             for stmt in node.body if isinstance(stmt, ast.ImportFrom) for a in stmt.names}
    assert typed == set(pm.__all__)
