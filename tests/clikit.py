"""What the command-line tests share: the `distpat` command run as a process (the ``held_port``
fixture is in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {k: v for k, v in os.environ.items() if not k.startswith("DISTPAT_")}
"""The test process's environment without DISTPAT_* variables (they would change the options)."""


def distpat(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m distpat ARGV`` with ``env`` added to :data:`ENV`, its output captured (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "distpat", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=ENV | (env or {}),
        check=False,
    )
