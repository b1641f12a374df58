"""The standalone commands never load aiohttp: only the embeddable driver (distpat.aiohttp) does.

Importing aiohttp costs a process about 18 MB and a tenth of a second; the admin listener
(net/admin.py) is plain asyncio so that no ``distpat`` command pays it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_layering import imported_modules

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "distpat"

STANDALONE = [
    "distpat.cli",
    "distpat.net.proxy",
    "distpat.net.workers",
    "distpat.net.redis_shard",
    "distpat.net.tcp",
    "distpat.net.admin",
    "distpat.config.pipeline",
    *sorted(f"distpat.cli.{p.stem}" for p in (PACKAGE / "cli").glob("*.py") if p.stem != "__init__"),
    *sorted(f"distpat.config.{p.stem}" for p in (PACKAGE / "config").glob("*.py") if p.stem != "__init__"),
]

CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "aiohttp" or m.startswith(("aiohttp.", "distpat.aiohttp")))
assert not loaded, loaded
"""


def test_no_standalone_command_imports_aiohttp() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", CHECK, *STANDALONE],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


OUTSIDE_THE_DRIVER = sorted(p for p in PACKAGE.rglob("*.py") if (PACKAGE / "aiohttp") not in p.parents)


@pytest.mark.parametrize("path", OUTSIDE_THE_DRIVER, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_aiohttp_driver_imports_aiohttp(path: Path) -> None:
    # Every import in the file, at its top or inside a function.
    bad = {
        m for m in imported_modules(path) if m.split(".")[0] == "aiohttp" or m.startswith("distpat.aiohttp")
    }
    assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_the_files_were_found() -> None:
    assert len(OUTSIDE_THE_DRIVER) >= 50
    assert "distpat.cli.proxy" in STANDALONE
