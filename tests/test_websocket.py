"""WebSocket upgrades through the proxy and the sidecar, with aiohttp's client and server as the peers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from distpat.net.proxy import ProxyConfig, ProxyServer
from tests.httpkit import HOST, RawClient
from tests.nutcracker import free_ports
from tests.test_admin import sample, samples_of
from tests.tlskit import Issuer, running_distpat, running_sidecar

MiB = 1 << 20
BIG = 10 * MiB


class Upstream:
    """An aiohttp application: /ws echoes, /flood sends until told to stop, /refuse answers 426."""

    def __init__(self) -> None:
        self.flood_sent = 0
        self.flood_done = asyncio.Event()
        self.requests: list[tuple[str, str | None, str | None]] = []

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self.requests.append(
            (request.path, request.headers.get("Upgrade"), request.headers.get("Connection"))
        )
        ws = web.WebSocketResponse(max_msg_size=2 * BIG)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def flood(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        chunk = b"f" * MiB
        for _ in range(100):  # bounded: at most 100 MiB
            await ws.send_bytes(chunk)  # waits while the transport's buffer is full
            self.flood_sent += len(chunk)
        self.flood_done.set()
        await ws.close()
        return ws

    async def refuse(self, request: web.Request) -> web.Response:
        self.requests.append(
            (request.path, request.headers.get("Upgrade"), request.headers.get("Connection"))
        )
        return web.Response(status=426, text="not here", headers={"Upgrade": "websocket"})

    async def plain(self, request: web.Request) -> web.Response:
        return web.Response(text="plain " + request.path)


@contextlib.asynccontextmanager
async def upstream_app() -> AsyncIterator[tuple[Upstream, int]]:
    up = Upstream()
    app = web.Application()
    app.router.add_get("/ws", up.ws)
    app.router.add_get("/flood", up.flood)
    app.router.add_get("/refuse", up.refuse)
    app.router.add_get("/plain", up.plain)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        yield up, int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def proxy_to(port: int, **kwargs: object) -> AsyncIterator[ProxyServer]:
    server = ProxyServer(
        ProxyConfig(listen=(HOST, 0), upstreams=(f"http://{HOST}:{port}",), access_log="json", **kwargs)  # type: ignore[arg-type]
    )
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(2)


async def echo_both_ways(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str("hello")
    assert (await ws.receive(timeout=10)).data == "hello"
    big = bytes(range(256)) * (BIG // 256)
    await ws.send_bytes(big)  # 10 MB to the upstream, and back again
    msg = await ws.receive(timeout=60)
    assert msg.type is aiohttp.WSMsgType.BINARY
    assert msg.data == big


async def test_websocket_echo_through_the_proxy_with_a_10_mb_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with upstream_app() as (up, port), proxy_to(port) as p:
        with caplog.at_level(logging.INFO, logger="distpat.access"):
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"http://{HOST}:{p.port}/ws", max_msg_size=2 * BIG) as ws,
            ):
                await echo_both_ways(ws)
                assert len(p.state.connections) == 1
            for _ in range(100):
                if not p.state.connections:
                    break
                await asyncio.sleep(0.05)
        metrics = samples_of(p.metrics.render()[0].decode())
    assert up.requests == [("/ws", "websocket", "upgrade")]
    assert not p.state.connections  # closed on both sides
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "distpat.access"]
    assert line["status"] == 101
    assert line["request"] == "GET /ws HTTP/1.1"
    assert int(line["body_bytes_sent"]) > BIG  # the tunnel's bytes to the client
    assert sample(metrics, "distpat_http_requests_total", status="101", upstream=f"{HOST}:{port}") == 1
    assert sample(metrics, "distpat_open_connections") == 0


async def test_a_slow_reader_holds_the_upstream_back() -> None:
    async with upstream_app() as (up, port), proxy_to(port) as p, aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{HOST}:{p.port}/flood", max_msg_size=2 * MiB)
        try:
            # The client reads nothing: the upstream must stop at a few socket buffers' worth.
            previous = -1
            for _ in range(100):
                await asyncio.sleep(0.1)
                if up.flood_sent == previous:
                    break
                previous = up.flood_sent
            assert not up.flood_done.is_set()
            assert up.flood_sent < 40 * MiB, up.flood_sent
            assert len(p.state.connections) == 1, (p.state.connections, up.flood_sent, ws.closed)
            [conn] = p.state.connections
            assert conn.transport is not None
            assert conn.transport.get_write_buffer_size() <= 2 * MiB  # the proxy buffers little
            received = 0
            while received < 100 * MiB:
                msg = await ws.receive(timeout=30)
                assert msg.type is aiohttp.WSMsgType.BINARY, msg
                received += len(msg.data)
            assert received == 100 * MiB
            assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
        finally:
            await ws.close()


async def test_a_refused_upgrade_continues_as_http_on_the_same_connection() -> None:
    async with upstream_app() as (up, port), proxy_to(port) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(
                b"GET /refuse HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            [refused] = await client.read_responses(1)
            await client.send(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n")
            [plain] = await client.read_responses(1)
        finally:
            await client.close()
    assert refused.status == 426
    assert refused.body == b"not here"
    assert (plain.status, plain.body) == (200, b"plain /plain")
    assert up.requests == [("/refuse", "websocket", "upgrade")]


async def test_an_idle_tunnel_is_closed_after_the_response_timeout() -> None:
    from distpat.net.server import EngineSettings

    async with (
        upstream_app() as (_, port),
        proxy_to(port, settings=EngineSettings(response_timeout=0.5)) as p,
    ):
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://{HOST}:{p.port}/ws", autoping=False) as ws,
        ):
            msg = await ws.receive(timeout=10)  # nothing is sent: the proxy closes the tunnel
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        for _ in range(100):
            if not p.state.connections:
                break
            await asyncio.sleep(0.05)
        assert not p.state.connections


async def test_connect_is_refused_with_a_reason() -> None:
    async with upstream_app() as (up, port), proxy_to(port) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
            [r] = await client.read_responses(1)
        finally:
            await client.close()
    assert r.status == 501
    assert b"reverse proxy" in r.body
    assert up.requests == []


async def test_wss_echo_through_the_sidecar(tmp_path: Path) -> None:
    issuer = Issuer(tmp_path)
    server = issuer.pair("server", "localhost", "127.0.0.1")
    (listen,) = free_ports(1)
    async with upstream_app() as (up, port):
        args = ("--cert", str(server.cert), "--key", str(server.key), "--upstream", f"http://{HOST}:{port}")
        async with running_sidecar(tmp_path, listen, *args, "--shutdown-timeout", "2"):
            ctx = ssl.create_default_context(cafile=str(issuer.ca_path))
            async with aiohttp.ClientSession() as session:
                url = f"wss://localhost:{listen}/ws"
                async with session.ws_connect(url, ssl=ctx, max_msg_size=2 * BIG) as ws:
                    await echo_both_ways(ws)
    assert up.requests == [("/ws", "websocket", "upgrade")]


async def test_websocket_echo_through_a_distpat_proxy_process(tmp_path: Path) -> None:
    (listen,) = free_ports(1)
    async with upstream_app() as (up, port):
        argv = [
            "--listen",
            f"{HOST}:{listen}",
            "--upstream",
            f"http://{HOST}:{port}",
            "--shutdown-timeout",
            "2",
        ]
        async with (
            running_distpat("proxy", tmp_path, listen, argv),
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://{HOST}:{listen}/ws", max_msg_size=2 * BIG) as ws,
        ):
            await echo_both_ways(ws)
    assert up.requests == [("/ws", "websocket", "upgrade")]


@pytest.mark.parametrize("offer", [b"h2c", b"h2c, TLS/1.2", b"IRC/6.9", b"websocketx"])
async def test_other_protocols_are_not_offered_to_the_upstream(offer: bytes) -> None:
    # h2c above all: a tunnel of HTTP/2 requests the proxy would never see ("h2c smuggling")
    async with upstream_app() as (up, port), proxy_to(port) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(
                b"GET /refuse HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: %s\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" % offer
            )
            [first] = await client.read_responses(1)
            await client.send(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n")
            [plain] = await client.read_responses(1)
        finally:
            await client.close()
    assert first.status == 426  # the upstream's own answer to a plain GET
    assert up.requests == [("/refuse", None, None)]
    assert (plain.status, plain.body) == (200, b"plain /plain")


async def test_backpressure_holds_from_the_first_byte_after_the_switch() -> None:
    """An upstream that sends its 101 and a flood in one go, to a client that reads nothing: the
    upstream is held back at a few buffers' worth from the start of the tunnel. (The case where the
    client's buffer is already over its high-water mark when the tunnel takes over is tested on the
    splice itself, below: over loopback the kernel's buffers absorb the first read.)"""
    sent = 0
    total = 64 * MiB

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        writer.write(head + b"x" * MiB)  # the 101 and the first bytes of the new protocol together
        sent = MiB
        with contextlib.suppress(ConnectionError):
            while sent < total:
                writer.write(b"y" * MiB)
                await asyncio.wait_for(writer.drain(), 10)
                sent += MiB
        writer.close()

    upstream = await asyncio.start_server(flood, HOST, 0)
    port = upstream.sockets[0].getsockname()[1]
    try:
        async with proxy_to(port) as p:
            client = await RawClient.connect(p.port)
            try:
                await client.send(
                    b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                previous = -1
                for _ in range(100):  # until the upstream is held back (or it sent everything)
                    await asyncio.sleep(0.1)
                    if sent == previous:
                        break
                    previous = sent
                assert sent < 40 * MiB, sent
                [conn] = p.state.connections
                assert conn.transport is not None
                assert conn.transport.get_write_buffer_size() <= 4 * MiB  # a read or so, not the flood
            finally:
                await client.close()
    finally:
        upstream.close()
        await upstream.wait_closed()


class FakeTransport:
    """Enough of a transport for a Splice: writes kept; over ``high`` bytes, pause_writing once."""

    def __init__(self, high: int = 64 * 1024) -> None:
        self.protocol: asyncio.BaseProtocol | None = None
        self.written = 0
        self.high = high
        self.reading = False  # paused until the splice starts it
        self.paused_writing = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self.high and not self.paused_writing:
            self.paused_writing = True
            assert isinstance(self.protocol, asyncio.Protocol)
            self.protocol.pause_writing()

    def drained(self) -> None:
        self.written = 0
        self.paused_writing = False
        assert isinstance(self.protocol, asyncio.Protocol)
        self.protocol.resume_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("how", ["filled by the first bytes", "full before the switch"])
async def test_a_splice_reads_a_side_only_while_the_other_can_take_it(how: str) -> None:
    from distpat.net.tunnel import Splice

    client, upstream = FakeTransport(), FakeTransport()
    splice = Splice(client, upstream, idle_timeout=None, on_closed=lambda _a, _b: None, name="test")  # type: ignore[arg-type]
    if how == "filled by the first bytes":
        splice.start(b"", b"u" * 300_000)  # what came with the 101 overfills the client's buffer
    else:
        splice.start(b"", b"", client_full=True)  # the old protocol saw pause_writing already
    assert not upstream.reading  # the client cannot take more: the upstream is not read
    assert client.reading  # the upstream's buffer has room: the client is read
    client.drained()
    assert upstream.reading
