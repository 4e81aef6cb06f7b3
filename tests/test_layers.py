"""The house's import structure: no cycles, and no lower layer importing a higher one.

The layer order is written in docs/architecture.md ("Layers"); this test holds the code to it.
Every ``import`` counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import gpurisk

PKG = Path(gpurisk.__file__).parent
ARCH = PKG.parent / "docs" / "architecture.md"


def _modules() -> dict[str, Path]:
    """{dotted module name: file} of every module of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(module: str, node: ast.AST) -> list[str]:
    """The gpurisk modules an import node names (resolved to the longest existing module)."""
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            is_pkg = MODULES[module].name == "__init__.py"
            base = base if is_pkg else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        names = [f"{stem}.{a.name}" for a in node.names] + [stem]
    out = []
    for n in names:
        while n and n not in MODULES:
            n = n.rpartition(".")[0]
        if n.startswith("gpurisk"):
            out.append(n)
    return sorted(set(out))


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _target(mod, node):
                    if t != mod and not mod.startswith(t + "."):  # a submodule naming its own package is no edge
                        g[mod].add(t)
    return g


def _layers() -> list[list[str]]:
    """The layer table of docs/architecture.md: rows ``| N | `a`, `b/` | ... |`` from the bottom up."""
    text = ARCH.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"^\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            rows.append((int(m.group(1)), re.findall(r"`([^`]+)`", m.group(2))))
    rows.sort()
    return [names for _, names in rows]


def _layer_of() -> dict[str, int]:
    """{module: layer} from the table: ``x/`` names a package and everything under it."""
    table = {}
    for i, names in enumerate(_layers()):
        for n in names:
            table["gpurisk." + n.rstrip("/").replace("/", ".").removesuffix(".py")] = i
    out = {}
    for mod in MODULES:
        if mod == "gpurisk":
            continue
        key = mod
        while key and key not in table:
            key = key.rpartition(".")[0]
        out[mod] = table.get(key, -1)
    return out


def test_every_module_has_a_layer():
    unplaced = sorted(m for m, layer in _layer_of().items() if layer < 0)
    assert not unplaced, f"modules missing from the layer table of docs/architecture.md: {unplaced}"


def test_no_lower_layer_imports_a_higher_one():
    layer = _layer_of()
    upward = sorted(
        f"{m} (layer {layer[m]}) imports {t} (layer {layer[t]})"
        for m, ts in _graph().items() if m != "gpurisk"
        for t in ts if t != "gpurisk" and layer[t] > layer[m]
    )
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    g = _graph()
    # packages' __init__ re-export their submodules: an edge package -> its own submodule is not a cycle
    # when the submodule imports a sibling through the package; count only edges between distinct modules
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.count(".") <= 1))
def test_each_subpackage_imports_on_its_own(name):
    """``import gpurisk.X`` works for every top-level module and subpackage (optional extras aside)."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith("gpurisk"):
            pytest.skip(f"{name} needs the optional dependency {exc.name}")
        raise


def test_the_walk_sees_the_whole_package():
    walked = {m.name for m in pkgutil.walk_packages(gpurisk.__path__, "gpurisk.")}
    assert walked <= set(MODULES)
