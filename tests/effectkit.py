"""Small pieces the effect carriers' tests share: a bounded wait, a dead port, a pool of URLs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from distpat.net.pool import UpstreamGroup
from distpat.net.upstream import Upstream
from tests.httpkit import HOST


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def dead_url() -> str:
    """A 127.0.0.1 port nothing listens on (bound, then closed): connecting is refused."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    return f"http://{HOST}:{port}"


def group_of(*urls: str, name: str = "default") -> UpstreamGroup:
    return UpstreamGroup([Upstream(url) for url in urls], name=name)


def name_of(url: str) -> str:
    """An upstream's name (``host:port``) from its URL."""
    return url.removeprefix("http://")
