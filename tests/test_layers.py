"""The layers hold: read from the source (an import inside a function counts too), the
engine never imports reflex, the app never imports torch, no module imports one from a
later stage of the data flow, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backpropagate_core", "backpropagate_app")

# Stages in data-flow order; a module may import its own layer and the ones above it.
LAYERS = [
    ["backpropagate_core.errors", "backpropagate_core.redact", "backpropagate_core.config",
     "backpropagate_core.logs", "backpropagate_core.platform_support", "backpropagate_core.privacy",
     "backpropagate_core.troubleshooting", "backpropagate_core.runs.layout", "backpropagate_core.runs.events",
     "backpropagate_core.memory_limit"],
    ["backpropagate_core.runs.store", "backpropagate_core.runs.schema", "backpropagate_core.runs.console",
     "backpropagate_core.hardware",
     "backpropagate_core.data", "backpropagate_core.model", "backpropagate_core.eval"],
    ["backpropagate_core.training"],
    ["backpropagate_core.export", "backpropagate_core.eval.run"],
    ["backpropagate_core.runs", "backpropagate_core.serve"],
    ["backpropagate_core", "backpropagate_core.api", "backpropagate_core.cli"],
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[str]:
    """Every module name an import statement in the file names (its own modules resolved)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names += [s for s in subs if s in MODULES] or [node.module]
    return names


def _own(name: str) -> str | None:
    """The project module an imported name belongs to, if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


GRAPH = {mod: {own for name in _imports(path) if (own := _own(name)) and own != mod}
         for mod, path in MODULES.items()}


def _layer(module: str) -> int:
    best = max(((len(prefix), n) for n, prefixes in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


@pytest.mark.parametrize("package, forbidden", [("backpropagate_core", "reflex"),
                                                ("backpropagate_app", "torch"),
                                                ("backpropagate_app", "transformers"),
                                                ("backpropagate_app", "peft")])
def test_layers_keep_their_imports(package, forbidden):
    offenders = [str(path.relative_to(ROOT)) for mod, path in MODULES.items() if mod.startswith(package)
                 and any(name.split(".")[0] == forbidden for name in _imports(path))]
    assert not offenders, f"{package} imports {forbidden}: {offenders}"


def test_no_module_imports_a_later_stage():
    wrong = [f"{a} -> {b}" for a, targets in GRAPH.items() if a.startswith("backpropagate_core")
             for b in targets if b.startswith("backpropagate_core") and _layer(b) > _layer(a)
             and not a == "backpropagate_core"]  # the package root only names the public API lazily
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_there_are_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other: {cycles}"
