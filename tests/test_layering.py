"""The layering rule: distpat.core is pure, and imports point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "distpat"
FORBIDDEN_IN_CORE = {
    "asyncio",
    "socket",
    "ssl",
    "time",
    "random",
    "selectors",
    "threading",
    "subprocess",
    "os",
    "aiohttp",
    "redis",
    "uvloop",
    "datetime",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


CORE_FILES = sorted((SRC / "core").rglob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_core_does_no_io_and_reads_no_clock(path: Path) -> None:
    modules = imported_modules(path)
    bad = {m for m in modules if m.split(".")[0] in FORBIDDEN_IN_CORE}
    assert not bad, f"{path.name} imports {sorted(bad)}"
    upward = {
        m
        for m in modules
        if m.startswith("distpat.") and not m.startswith(("distpat.core", "distpat.errors"))
    }
    assert not upward, f"{path.name} imports from outer layers: {sorted(upward)}"


def test_core_files_were_found() -> None:
    assert len(CORE_FILES) >= 8


# Each outer layer may import the layers under it, never one above: cli -> config -> net -> core, and
# every layer errors. (config builds net's configuration values, so it may import net; net never
# reads configuration files or flags.)
ABOVE = {
    "net": ("distpat.config", "distpat.cli"),
    "config": ("distpat.cli",),
}
OUTER_FILES = [(layer, path) for layer in ABOVE for path in sorted((SRC / layer).rglob("*.py"))]


@pytest.mark.parametrize(
    ("layer", "path"), OUTER_FILES, ids=[str(p.relative_to(SRC)) for _, p in OUTER_FILES]
)
def test_imports_point_one_way(layer: str, path: Path) -> None:
    upward = {m for m in imported_modules(path) if m.startswith(ABOVE[layer])}
    assert not upward, f"{layer}/{path.name} imports from a layer above it: {sorted(upward)}"


def test_outer_layer_files_were_found() -> None:
    assert {layer for layer, _ in OUTER_FILES} == set(ABOVE)
    assert len(OUTER_FILES) >= 20


# The public modules at the package's top level sit with the layer they re-export: distpat.ring is
# the rings' API (core), so it pulls in no configuration and no randomness (callers pass draws in).
TOP_LEVEL = {"ring.py": ("distpat.config", "distpat.cli", "distpat.net", "random")}


@pytest.mark.parametrize("name", sorted(TOP_LEVEL))
def test_top_level_modules_keep_to_their_layer(name: str) -> None:
    bad = {m for m in imported_modules(SRC / name) if m == "random" or m.startswith(TOP_LEVEL[name])}
    assert not bad, f"distpat/{name} imports {sorted(bad)}"


def _module_path(module: str) -> Path | None:
    parts = module.split(".")[1:]
    for candidate in (SRC.joinpath(*parts).with_suffix(".py"), SRC.joinpath(*parts, "__init__.py")):
        if candidate.exists():
            return candidate
    return None


def _reachable(start: Path) -> dict[str, Path]:
    """Every distpat module ``start`` imports, directly or through other distpat modules."""
    seen: dict[str, Path] = {}
    todo = [start]
    while todo:
        path = todo.pop()
        for module in imported_modules(path):
            if module.startswith("distpat.") and module not in seen:
                found = _module_path(module)
                if found is not None:
                    seen[module] = found
                    todo.append(found)
    return seen


@pytest.mark.parametrize(
    ("layer", "path"), OUTER_FILES, ids=[str(p.relative_to(SRC)) for _, p in OUTER_FILES]
)
def test_no_layer_reaches_above_itself_through_another_module(layer: str, path: Path) -> None:
    upward = sorted(m for m in _reachable(path) if m.startswith(ABOVE[layer]))
    assert not upward, f"{layer}/{path.name} reaches a layer above it through its imports: {upward}"


# distpat.aiohttp is a driver beside net/: it uses core and errors, never the engine, the
# configuration layer or the command line (a user embeds it in their own application).
AIOHTTP_FILES = sorted((SRC / "aiohttp").rglob("*.py"))


@pytest.mark.parametrize("path", AIOHTTP_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_the_aiohttp_driver_imports_no_engine_configuration_or_cli(path: Path) -> None:
    bad = {
        m for m in imported_modules(path) if m.startswith(("distpat.net", "distpat.config", "distpat.cli"))
    }
    assert not bad, f"aiohttp/{path.name} imports {sorted(bad)}"


def test_the_aiohttp_driver_files_were_found() -> None:
    assert len(AIOHTTP_FILES) >= 8
