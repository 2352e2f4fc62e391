"""docs/architecture.md names every module of the engine and the app, and nothing that
does not exist: the map a newcomer reads cannot drift from the tree."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for package in ("backpropagate_core", "backpropagate_app")
            for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py"}


def test_every_module_is_on_the_map():
    named = set(re.findall(r"`((?:backpropagate_core|backpropagate_app)/[\w/]+\.py)`", DOC))
    assert named, "the map lists modules as `backpropagate_core/<stage>/<module>.py`"
    missing, stale = sorted(_modules() - named), sorted(named - _modules())
    assert not missing, f"modules missing from docs/architecture.md: {missing}"
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_every_function_the_map_names_exists():
    """`package.module.name` references in the text resolve to real objects."""
    refs = set(re.findall(r"`(backpropagate_core(?:\.\w+)+)`", DOC))
    assert refs
    for ref in sorted(refs):
        module, _, attr = ref.rpartition(".")
        try:
            obj = importlib.import_module(ref)
        except ModuleNotFoundError:
            obj = getattr(importlib.import_module(module), attr, None)
        assert obj is not None, f"docs/architecture.md names {ref}, which does not exist"
