"""The layers are as docs/design.md draws them: no module imports another that
(directly or not) imports it back at run time (imports under ``if TYPE_CHECKING:``
never run), and the private core imports nothing of corral outside ``_core``."""

from __future__ import annotations

import ast
from pathlib import Path

import corral

SRC = Path(corral.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except what sits under ``if TYPE_CHECKING:`` (never run)."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in (
                getattr(child.test, "id", None),
                getattr(child.test, "attr", None),
            ):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return out


def _imports() -> dict[str, set[str]]:
    """corral module -> the corral modules it imports (anywhere in it, lazily too)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out.add(sub if sub in modules else target)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("corral"):
                out.add(str(node.module))
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("corral"))
        graph[name] = {m for m in out if m in modules and m != name}
    return graph


def _is_package(name: str, graph: dict[str, set[str]]) -> bool:
    return any(other.startswith(name + ".") for other in graph)


def test_no_import_loops() -> None:
    # A package's __init__ is left out: importing a submodule runs it first anyway,
    # so an edge into it says nothing about the order of the layers.
    everything = _imports()
    graph = {
        name: {m for m in deps if not _is_package(m, everything)}
        for name, deps in everything.items()
        if not _is_package(name, everything)
    }
    loops = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                if dep == start:
                    loops.append(" -> ".join([*path, dep]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    assert loops == []


def test_the_core_knows_nobody_above_it() -> None:
    outside = {
        name: sorted(m for m in deps if not m.startswith("corral._core"))
        for name, deps in _imports().items()
        if name.startswith("corral._core")
    }
    assert {name: deps for name, deps in outside.items() if deps} == {}


def test_the_core_lists_all_its_modules() -> None:
    doc = corral._core.__doc__ or ""
    for path in (SRC / "_core").glob("_*.py"):
        if path.name == "__init__.py":
            continue
        assert f"``{path.stem}``" in doc, path.stem
