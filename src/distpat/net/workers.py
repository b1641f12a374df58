"""Worker processes: ``--workers N`` forks N servers that share one port through SO_REUSEPORT."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

__all__ = ["run_workers"]

log = logging.getLogger("distpat.proxy")

C = TypeVar("C")


def run_workers(config: C, workers: int, serve_one: Callable[[C], None]) -> int:
    """Fork ``workers`` processes, each running ``serve_one``; forward SIGTERM/SIGINT/SIGHUP to them.

    Only the first worker serves the admin listener.
    """
    children: list[int] = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                serve_one(config if i == 0 else replace(config, admin=None))  # type: ignore[type-var]
            except BaseException:
                log.exception("worker %d failed", i)
                code = 1
            os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status
