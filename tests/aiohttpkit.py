"""Upstreams for the aiohttp router tests: real aiohttp servers on 127.0.0.1 answering their name.

Each :class:`Named` server answers any request with JSON naming itself and what it got (the
target as the request line had it, the method, the fields), except ``.../echo``, which streams
the request body back as it reads it, in a chunked response that names the server in
``X-Name`` (recording how many reads the body took), and ``.../hold``, which answers once
:attr:`Named.release` is set. :func:`the_cookie` reads the visitor cookie a split sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.nutcracker import free_ports

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]

__all__ = ["HOST", "ROOT", "AppServer", "Named", "app_servers", "dead_url", "named_upstreams", "the_cookie"]

_COOKIE = re.compile(r"^visitor=([0-9a-f]{16}); Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax$")


class AppServer:
    """An aiohttp application on 127.0.0.1 serving :meth:`handle` for every path; what it
    received goes in :attr:`requests`, and :attr:`release` is an event a handler may wait for."""

    client_max_size = 1024**2

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.server: TestServer | None = None
        self.release = asyncio.Event()

    @property
    def name(self) -> str:
        """``127.0.0.1:PORT``: the ``server`` line nginx would have, the name the ring hashes."""
        assert self.server is not None
        return f"{HOST}:{self.server.port}"

    @property
    def url(self) -> str:
        return f"http://{self.name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app, host=HOST)
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.server is not None
        await self.server.close()


S = TypeVar("S", bound=AppServer)


@contextlib.asynccontextmanager
async def app_servers(kind: type[S], count: int) -> AsyncIterator[list[S]]:
    """``count`` servers of ``kind``, started and stopped together."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(kind()) for _ in range(count)]


class Named(AppServer):
    """One upstream; :attr:`requests` is what it received, in order (``.../hold`` waits for
    :attr:`release`)."""

    def hits(self, target: str) -> int:
        return sum(1 for r in self.requests if r["target"] == target)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record: dict[str, Any] = {
            "name": self.name,
            "method": request.method,
            "target": request.raw_path,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
        }
        self.requests.append(record)
        if request.path.endswith("/hold"):
            await self.release.wait()
        if request.path.endswith("/echo"):
            response = web.StreamResponse(headers={"X-Name": self.name})
            response.enable_chunked_encoding()
            await response.prepare(request)
            reads = received = 0
            async for chunk in request.content.iter_any():
                reads += 1
                received += len(chunk)
                await response.write(chunk)
            record.update(reads=reads, received=received)
            await response.write_eof()
            return response
        await request.read()
        return web.json_response(record)


def named_upstreams(count: int) -> contextlib.AbstractAsyncContextManager[list[Named]]:
    return app_servers(Named, count)


def dead_url() -> str:
    """An http:// URL of a 127.0.0.1 port nothing listens on."""
    (port,) = free_ports(1)
    return f"http://{HOST}:{port}"


def the_cookie(response: aiohttp.ClientResponse) -> str:
    """The visitor ID of the one ``Set-Cookie`` a split sets for cookie ``visitor`` (its defaults)."""
    (field,) = response.headers.getall("Set-Cookie")
    match = _COOKIE.match(field)
    assert match is not None, field
    return match[1]
