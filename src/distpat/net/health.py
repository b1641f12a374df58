"""Active health checks: a periodic ``GET`` to each upstream, as a load balancer's probe does.

Passive health (in :mod:`distpat.net.upstream`) only notices an upstream that
refuses connections; an upstream that accepts them but answers 500 from its
health endpoint needs asking. One task per upstream (not per request) sends
``GET <path>`` on a fresh connection every ``interval`` seconds; a 2xx or 3xx
answer within ``timeout`` passes, anything else fails. ``fails`` failures in
a row take the upstream out of rotation until a check passes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from distpat.net.upstream import Upstream

__all__ = ["HealthCheck", "HealthChecker"]

log = logging.getLogger("distpat.proxy")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 2.0
    fails: int = 2


async def probe(upstream: Upstream, check: HealthCheck) -> str | None:
    """None when ``upstream`` answers ``GET check.path`` with 2xx or 3xx in time, else what went wrong."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            writer.write(
                f"GET {check.path} HTTP/1.1\r\nHost: {upstream.name}\r\n"
                "User-Agent: distpat-health\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            line = await reader.readline()
    except TimeoutError:
        return f"no answer in {check.timeout:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return f"not an HTTP response: {line[:60]!r}"
    status = int(parts[1])
    return None if 200 <= status < 400 else f"status {status}"


class HealthChecker:
    """Runs the checks of every upstream until stopped."""

    def __init__(self, upstreams: list[Upstream], check: HealthCheck) -> None:
        self.upstreams = upstreams
        self.check = check
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._run(u)) for u in self.upstreams]

    async def _run(self, upstream: Upstream) -> None:
        failures = 0
        while True:
            problem = await probe(upstream, self.check)
            if problem is None:
                if failures >= self.check.fails:
                    log.warning("upstream %s: health check passes again", upstream.name)
                failures = 0
                upstream.mark_up()
            else:
                failures += 1
                if failures == self.check.fails:
                    log.warning(
                        "upstream %s: health check failed %d times: %s", upstream.name, failures, problem
                    )
                if failures >= self.check.fails:
                    upstream.mark_down()
            await asyncio.sleep(self.check.interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
