"""The core's shape: packages by concept, no import circles, small classes, one logger per module, current docs.

The import graph is read from the source (``ast``), not by importing: an edge is any ``import milzoo...`` or
``from milzoo... import`` in a module, at module level or inside a function (``TYPE_CHECKING`` blocks aside,
they never run).  Importing a package's lazy name (``from milzoo.registry import get_component``) counts as an
edge to the module that defines it, read from the package's ``_EXPORTS`` table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "milzoo"
#: the modules the top level may hold besides packages
TOP_LEVEL_MODULES = {"__init__", "__main__", "errors", "metrics", "_atomic", "_lazy", "_moved", "_untrusted",
                     "_version"}
MAX_CLASS_LINES = 250


def _modules() -> dict[str, Path]:
    out = {}
    for p in CORE.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _exports(package: str) -> dict[str, str]:
    """A package's lazy ``_EXPORTS`` table: name -> defining module (absolute)."""
    path = MODULES[package]
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {k: v if v.startswith("milzoo") else f"{package}.{v}" for k, v in table.items()}
    return {}


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.AST, is_package: bool) -> set[str]:
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == "milzoo":
                out.add(_resolve(alias.name))
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        if base.split(".")[0] != "milzoo":
            return out
        exports = _exports(base) if base in MODULES and MODULES[base].name == "__init__.py" else {}
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if full in MODULES:
                out.add(full)
            elif alias.name in exports:
                out.add(_resolve(exports[alias.name]))
            else:
                out.add(_resolve(base))
    out.discard(None)
    return out


def _imports(module: str, path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    if module_level_only:
        nodes = []
        todo = list(tree.body)
        while todo:
            n = todo.pop()
            if isinstance(n, (ast.If, ast.Try, ast.With)):
                todo += [*n.body, *getattr(n, "orelse", []), *getattr(n, "finalbody", [])]
                for h in getattr(n, "handlers", []):
                    todo += h.body
            else:
                nodes.append(n)
    else:
        nodes = list(ast.walk(tree))
    out: set[str] = set()
    for n in nodes:
        if id(n) not in skip and isinstance(n, (ast.Import, ast.ImportFrom)):
            out |= _targets(module, n, path.name == "__init__.py")
    out.discard(module)
    return out


def _cycles(module_level_only: bool) -> list[list[str]]:
    graph = {m: _imports(m, p, module_level_only) for m, p in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_at_module_level():
    assert _cycles(module_level_only=True) == []


def test_no_import_circle_even_through_imports_inside_functions():
    """A lazy import inside a function is still a dependency: none goes back up the layers."""
    assert _cycles(module_level_only=False) == []


def test_the_top_level_holds_packages_and_a_handful_of_modules():
    modules = {p.stem for p in CORE.glob("*.py")}
    assert modules <= TOP_LEVEL_MODULES, sorted(modules - TOP_LEVEL_MODULES)
    packages = {p.name for p in CORE.iterdir() if (p / "__init__.py").is_file()}
    assert {"registry", "recipe", "model", "checkpoint", "train", "runs", "hub", "cli", "datasets", "components",
            "layers", "report", "testing", "builtin"} <= packages


def test_no_class_in_the_core_is_over_250_lines():
    long = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long.append(f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_every_module_logs_under_its_own_name():
    """A module's logger is ``getLogger(__name__)``; only handlers are attached to the ``milzoo`` parent."""
    shared = [m for m, p in MODULES.items() if re.search(r"^\w+ = (logging\.)?getLogger\((?!__name__)", p.read_text(), re.M)]
    assert shared == [], "use logging.getLogger(__name__)"


def test_every_package_states_its_public_names():
    for m, p in MODULES.items():
        if p.name == "__init__.py" and m != "milzoo":
            src = p.read_text()
            assert "__all__" in src, f"{m} does not state its public names"
            assert ast.get_docstring(ast.parse(src)), f"{m} has no docstring saying what it owns"


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py"))
def test_every_lazy_name_resolves(package):
    import importlib

    mod = importlib.import_module(package)
    for name in getattr(mod, "__all__", []):
        assert getattr(mod, name) is not None or name == "__version__"


def test_the_architecture_doc_names_only_modules_that_exist_and_every_package():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(milzoo(?:/[A-Za-z_]+)+(?:\.py|/))`", doc))
    assert named, "docs/architecture.md names no module paths"
    missing = [n for n in named if not (ROOT / n).exists()]
    assert missing == []
    for pkg in (p for p in CORE.iterdir() if (p / "__init__.py").is_file()):
        assert f"`milzoo/{pkg.name}/`" in doc, f"docs/architecture.md does not show milzoo/{pkg.name}/"
    for p in CORE.rglob("*.py"):
        rel = p.relative_to(ROOT).as_posix()
        if p.name != "__init__.py" and "/testing/" not in rel and "/report/" not in rel and "/builtin/" not in rel:
            assert f"`{rel}`" in doc, f"docs/architecture.md does not name {rel}"
