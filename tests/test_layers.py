"""The engine never imports reflex and the app never imports torch (read from the source,
so an import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_packages(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found.setdefault(str(path.relative_to(ROOT)), set()).update(n.split(".")[0] for n in names)
    return found


@pytest.mark.parametrize("package, forbidden", [("backpropagate_core", "reflex"),
                                                ("backpropagate_app", "torch")])
def test_layers_keep_their_imports(package, forbidden):
    offenders = [path for path, names in _imported_packages(package).items() if forbidden in names]
    assert not offenders, f"{package} imports {forbidden}: {offenders}"
