"""The package's shape: no import cycle, no import of another module's private name, and
module and function sizes within bounds (DESIGN.md, "Sizes")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "unified_latents"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(mods: dict[str, Path]):
    """(importer, module it makes Python run, imported name or None) for every import, also
    those inside functions; importing a.b.c runs a, a.b and a.b.c."""
    for name, path in mods.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                pkg = ".".join(base[: len(base) - node.level + 1] if node.level else [])
                mod = ".".join(p for p in (pkg, node.module or "") if p)
                targets = [
                    (f"{mod}.{a.name}", None) if f"{mod}.{a.name}" in mods else (mod, a.name) for a in node.names
                ]
            else:
                continue
            for target, imported in targets:
                if target.split(".")[0] == PKG.name:
                    yield name, target, imported


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for src, target, _ in _imports(mods):
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod in mods and mod != src and not src.startswith(mod + "."):
                edges[src].add(mod)
    return edges


def test_no_import_cycle():
    edges, state, cycles = _graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycles.append(path[path.index(t) :] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_import():
    bad = [
        f"{src} imports {imp} from {t}"
        for src, t, imp in _imports(_modules())
        if imp and imp.startswith("_") and not imp.startswith("__")
    ]
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_sizes(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400, f"{path.name}: over 400 lines"
    long = [
        f"{n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for n in ast.walk(ast.parse(text))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60
    ]
    assert not long, f"{path.name}: functions over 60 lines: {', '.join(long)}"
