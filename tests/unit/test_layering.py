"""DESIGN.md's dependency direction: the surfaces (api, web, hf, cli) do not import each
other, and nothing below them imports any of them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hub

HUB = Path(hub.__file__).parent
SURFACES = ("api", "web", "hf", "cli")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _surface_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "hub" and parts[1] in SURFACES else None


@pytest.mark.parametrize("surface", SURFACES)
def test_a_surface_imports_no_other_surface(surface):
    wrong = sorted(f"{path.relative_to(HUB.parent)}: {module}"
                   for path in (HUB / surface).rglob("*.py")
                   for module in _imports(path)
                   if _surface_of(module) not in (None, surface))
    assert wrong == []


#: The modules that put the surfaces together: the app factory and the package's entry.
ASSEMBLY = {HUB / "app.py", HUB / "__init__.py"}


def test_nothing_outside_the_surfaces_imports_one():
    """Services, the engine, storage, jobs and the modules the surfaces share (limits,
    the bearer caller, file responses) import no surface: only the app factory wires them."""
    wrong = sorted(f"{path.relative_to(HUB.parent)}: {module}"
                   for path in HUB.rglob("*.py")
                   if path not in ASSEMBLY and path.relative_to(HUB).parts[0] not in SURFACES
                   for module in _imports(path) if _surface_of(module) is not None)
    assert wrong == []
