"""Worker processes: ``--workers N`` forks N servers that share one port through SO_REUSEPORT.

The parent stays small: it forwards SIGTERM, SIGINT and SIGHUP to every worker,
waits for them, and serves the admin listener itself, gathering each worker's
metrics and readiness at every request (distpat.net.workerstats), so ``/metrics``
adds up all workers and a dead worker only drops out of the sum.

Those three signals are blocked from before the first fork until the parent's handlers are in, so
one sent during start-up waits for them instead of killing the parent and orphaning the workers. A
worker ignores all three until its own loop handles them; a SIGHUP forwarded to a worker still
starting is dropped (it has just read the file anyway), a SIGTERM is repeated by the parent. A
worker whose parent is gone drains and exits (:func:`watch_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, TypeVar

from distpat.errors import ConfigError
from distpat.net.admin import AdminServer, create_admin_app
from distpat.net.workerstats import WorkerGroupStats

__all__ = ["run_workers", "watch_parent"]

log = logging.getLogger("distpat.proxy")


class _WithAdmin(Protocol):
    @property
    def admin(self) -> tuple[str, int] | None: ...


C = TypeVar("C", bound=_WithAdmin)


def run_workers(config: C, workers: int, serve_one: Callable[[C, str], None]) -> int:
    """Fork ``workers`` processes, each running ``serve_one(config, stats_path)``; return the first
    non-zero exit status of theirs, or 0.

    Each worker answers the parent's questions on the Unix socket ``stats_path``
    (distpat.net.workerstats.serve_worker_stats); none serves the admin listener, which the
    parent runs when ``config.admin`` is set.
    """
    admin = None
    if config.admin is not None:  # bound now: an address in use is an error before any fork
        host, port = config.admin
        try:
            admin = socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=128
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} (admin): {exc.strerror or exc}") from None
    directory = tempfile.mkdtemp(prefix="distpat-workers-")
    paths = [os.path.join(directory, f"worker-{i}.sock") for i in range(workers)]
    child_config = replace(config, admin=None)  # type: ignore[type-var]
    children: list[int] = []
    parent = os.getpid()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # until _parent handles them

    def unblock() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    try:
        for path in paths:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                global _parent_pid
                _parent_pid = parent
                if admin is not None:
                    admin.close()
                # Until its loop handles them, and once it has drained, the worker ignores SIGTERM,
                # SIGINT and SIGHUP (run_until_signalled puts these dispositions back): a signal sent
                # to the whole group and forwarded by the parent too must not kill a worker mid-exit.
                # The parent repeats SIGTERM while a worker lives, so one sent while it starts is not
                # lost; a SIGHUP then is (the worker is reading the file as it stands anyway).
                for signum in _SIGNALS:
                    signal.signal(signum, signal.SIG_IGN)
                unblock()  # pending ones are discarded: ignored
                code = 0
                try:
                    serve_one(child_config, path)
                except BaseException:
                    log.exception("worker %s failed", path)
                    code = 1
                os._exit(code)
            children.append(pid)
        return asyncio.run(_parent(admin, children, paths, unblock))
    finally:
        unblock()
        shutil.rmtree(directory, ignore_errors=True)
        if admin is not None:
            admin.close()


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

RESEND_EVERY = 1.0
"""Seconds between repeats of SIGTERM/SIGINT to the workers still running, while they drain."""

FIRST_FORWARD_AFTER = 0.25
"""Seconds before the parent passes SIGTERM/SIGINT on. A signal sent to the whole process group
(systemd, ^C) has reached every worker already, and one that has drained in that time is gone by
then: passing it on at once would land a second signal in a worker's last steps of exiting."""

PARENT_CHECK_EVERY = 1.0
"""Seconds between a worker's looks at whether its parent still lives (:func:`watch_parent`)."""

_parent_pid: int | None = None
"""In a worker: the parent that forked it. None in any other process."""


def watch_parent(loop: asyncio.AbstractEventLoop) -> None:
    """In a worker of :func:`run_workers`: once its parent is gone (killed: a parent that exits waits
    for its workers first), the worker sends itself SIGTERM, so it drains and exits rather than serve
    on alone. Looked at every :data:`PARENT_CHECK_EVERY` seconds and sent again while the worker
    lives, so one that lands before the worker handles SIGTERM (it is ignored then) is not lost.
    Does nothing in a process that is not such a worker."""
    parent = _parent_pid
    if parent is None:
        return
    gone = False

    def check() -> None:
        nonlocal gone
        if os.getppid() != parent:
            if not gone:
                log.warning("parent %d is gone: draining", parent)
                gone = True
            os.kill(os.getpid(), signal.SIGTERM)
        loop.call_later(PARENT_CHECK_EVERY, check)

    check()


async def _parent(
    admin: socket.socket | None, children: list[int], paths: list[str], unblock: Callable[[], None]
) -> int:
    loop = asyncio.get_running_loop()
    draining = False
    exited: set[int] = set()  # reaped by _wait_all: never signalled again (their pids may be reused)
    repeat: asyncio.TimerHandle | None = None

    def send(signum: int) -> None:
        for pid in children:
            if pid not in exited:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def resend(signum: int) -> None:
        nonlocal repeat
        send(signum)
        repeat = loop.call_later(RESEND_EVERY, resend, signum)

    def forward(signum: int) -> None:
        nonlocal draining, repeat
        if signum == signal.SIGHUP:
            send(signum)
            return
        draining = True
        if repeat is not None:
            repeat.cancel()
        repeat = loop.call_later(FIRST_FORWARD_AFTER, resend, signum)

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, forward, signum)
    unblock()  # one sent since the first fork is handled now
    server: AdminServer | None = None
    try:
        if admin is not None:
            stats = WorkerGroupStats(paths, lambda: draining)
            app = create_admin_app(metrics=stats, ready=stats.ready, draining=stats.draining)
            server = AdminServer(app)
            await server.start_on(admin)
        return await asyncio.to_thread(_wait_all, children, exited)
    finally:
        if repeat is not None:
            repeat.cancel()
        if server is not None:
            await server.close()
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)


def _wait_all(children: list[int], exited: set[int]) -> int:
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        exited.add(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        if exit_code != 0:
            log.warning("worker %d exited with %d", pid, exit_code)
        status = status or exit_code
    return status
