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
