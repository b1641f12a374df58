"""Loopback HTTP peers for the proxy tests: a recording backend and a raw client.

:class:`Backend` is a small asyncio HTTP/1.1 server (parsed with httptools)
that records every request it receives, byte for byte as well as parsed, and
answers through a handler the test supplies; it can stall, stream large
bodies and close connections on purpose. :func:`exchange` and
:class:`RawClient` send raw bytes and read responses, so tests control every
byte a client sends. Only 127.0.0.1 is used; everything started is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

HOST = "127.0.0.1"


@dataclass
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_names(self) -> set[bytes]:
        return {k.lower() for k, _ in self.headers}


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None  # streamed with chunked encoding
    delay: float = 0.0
    close: bool = False  # close after the reply
    raw: bytes | None = None  # send these bytes instead of building a reply


Handler = Callable[[Request], Awaitable[Reply]]


async def echo(request: Request) -> Reply:
    return Reply(body=b"%s %s %d" % (request.method, request.target, len(request.body)))


class _BackendConnection(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self.current: Request | None = None
        self.url = b""
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        self.backend.connections += 1
        self.backend.transports.add(transport)  # type: ignore[arg-type]
        self.task = asyncio.ensure_future(self.serve())
        self.backend.tasks.add(self.task)
        self.task.add_done_callback(self.backend.tasks.discard)

    def data_received(self, data: bytes) -> None:
        if self.backend.keep_bodies:
            self.backend.raw.extend(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)
        if self.transport is not None:
            self.backend.transports.discard(self.transport)

    def on_message_begin(self) -> None:
        self.current = Request(b"", b"", [])
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method()
        self.current.target = self.url

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        if self.backend.keep_bodies:
            self.current.body += body
        self.backend.body_bytes += len(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.backend.requests.append(self.current)
        self.queue.put_nowait(self.current)
        self.current = None

    async def serve(self) -> None:
        assert self.transport is not None
        while True:
            request = await self.queue.get()
            if request is None or self.transport.is_closing():
                return
            reply = await self.backend.handler(request)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if self.transport.is_closing():
                return
            if reply.raw is not None:
                self.transport.write(reply.raw)
            elif reply.chunks is not None:
                head = [b"HTTP/1.1 %d OK" % reply.status, b"Transfer-Encoding: chunked"]
                head += [b"%s: %s" % kv for kv in reply.headers]
                self.transport.write(b"\r\n".join(head) + b"\r\n\r\n")
                async for piece in reply.chunks:
                    self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await self.backend.drain(self.transport)
                self.transport.write(b"0\r\n\r\n")
            else:
                head = [b"HTTP/1.1 %d OK" % reply.status, b"Content-Length: %d" % len(reply.body)]
                head += [b"%s: %s" % kv for kv in reply.headers]
                self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + reply.body)
            if reply.close:
                self.transport.close()
                return


class Backend:
    """A recording upstream on 127.0.0.1; use as ``async with Backend(handler) as b``."""

    def __init__(self, handler: Handler = echo, *, keep_bodies: bool = True) -> None:
        self.handler = handler
        self.keep_bodies = keep_bodies  # False: count request body bytes only (huge uploads)
        self.requests: list[Request] = []
        self.raw = bytearray()
        self.connections = 0
        self.body_bytes = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.transports: set[asyncio.Transport] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def drain(self, transport: asyncio.Transport) -> None:
        while transport.get_write_buffer_size() > 1 << 20 and not transport.is_closing():
            await asyncio.sleep(0.001)

    async def __aenter__(self) -> Backend:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _BackendConnection(self), HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for transport in list(self.transports):  # a stopped server drops its connections too
            transport.close()
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class _ResponseReader:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head_only = False

    def on_message_begin(self) -> None:
        self.headers, self.body = [], bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append(Response(self.parser.get_status_code(), self.headers, bytes(self.body)))


class RawClient:
    """A client connection sending raw bytes and reading parsed responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.responses = _ResponseReader()
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_responses(self, count: int, timeout: float = 5.0) -> list[Response]:
        async with asyncio.timeout(timeout):
            while len(self.responses.done) < count:
                data = await self.reader.read(65536)
                if not data:
                    self.eof = True
                    with contextlib.suppress(httptools.HttpParserError):
                        self.responses.parser.feed_data(b"")
                    break
                self.responses.parser.feed_data(data)
        out, self.responses.done = self.responses.done[:count], self.responses.done[count:]
        return out

    async def read_until_closed(self, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            await self.writer.wait_closed()


async def exchange(port: int, raw: bytes, count: int = 1, timeout: float = 5.0) -> list[Response]:
    client = await RawClient.connect(port)
    try:
        await client.send(raw)
        return await client.read_responses(count, timeout)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def running_proxy(*urls: str, **settings: object) -> AsyncIterator[Any]:
    """A ``ProxyServer`` on 127.0.0.1 in front of ``urls``, with EngineSettings changed by ``settings``."""
    from distpat.net.proxy import ProxyConfig, ProxyServer
    from distpat.net.server import EngineSettings

    config = ProxyConfig(
        listen=(HOST, 0), upstreams=urls, settings=dataclasses.replace(EngineSettings(), **settings)
    )
    server = ProxyServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)
