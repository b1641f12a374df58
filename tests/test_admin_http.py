"""The admin listener's HTTP/1.1 handling, over raw loopback sockets: framing, limits, timeouts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from distpat.errors import ConfigError
from distpat.net.admin import AdminLimits, AdminServer, create_admin_app
from distpat.net.admin_conn import http_date
from distpat.net.metrics import ProxyMetrics

WAIT = 5.0  # a bound on every read, never an asserted duration


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Source:
    """A metrics source whose body and readiness a test sets."""

    body: bytes = b"# nothing\n"
    ready: bool = True
    gate: asyncio.Event | None = None
    calls: list[str] = field(default_factory=list)

    def render(self) -> tuple[bytes, str]:
        return self.body, "text/plain; version=0.0.4; charset=utf-8"

    async def is_ready(self) -> bool:
        self.calls.append("ready")
        if self.gate is not None:
            await self.gate.wait()
        return self.ready


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Response:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = raw.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    body = b"" if head else await asyncio.wait_for(reader.readexactly(length), WAIT)
    return Response(int(status), headers, body)


async def at_eof(reader: asyncio.StreamReader) -> bool:
    """True when the server closed (or reset) the connection: nothing more arrives."""
    try:
        return await asyncio.wait_for(reader.read(65536), WAIT) == b""
    except ConnectionResetError:
        return True


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass
class Served:
    server: AdminServer
    source: Source
    connect: Connect


def serving(limits: AdminLimits | None = None, **kwargs: float) -> Callable[[], AsyncIterator[Served]]:
    async def fixture() -> AsyncIterator[Served]:
        source = Source()
        app = create_admin_app(metrics=source, ready=source.is_ready)
        server = AdminServer(app, limits=limits, **kwargs)
        await server.start("127.0.0.1", 0)
        writers: list[asyncio.StreamWriter] = []

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(writer)
            return reader, writer

        try:
            yield Served(server, source, connect)
        finally:
            await asyncio.wait_for(server.close(), WAIT)
            for writer in writers:
                writer.close()

    return fixture


admin = pytest.fixture(serving())
strict = pytest.fixture(
    serving(AdminLimits(max_header_bytes=512, max_body_bytes=64, header_timeout=0.2, idle_timeout=0.2))
)


async def ask(served: Served, request: bytes, *, head: bool = False) -> Response:
    reader, writer = await served.connect()
    writer.write(request)
    return await read_response(reader, head=head)


# -- answers ----------------------------------------------------------------------------------------


async def test_get_answers_with_its_fields(admin: Served) -> None:
    r = await ask(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (r.status, r.body) == (200, b"ok\n")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["date"].endswith(" GMT")
    assert "connection" not in r.headers


async def test_head_sends_the_fields_of_get_and_no_content(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await read_response(reader, head=True)
    assert head.status == 200
    assert head.headers["content-length"] == str(len(admin.source.body))
    assert head.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    # what follows the HEAD answer is the next answer, not a body
    assert (await read_response(reader)).body == b"ok\n"


async def test_unknown_path_is_404_and_the_connection_stays(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 404
    writer.write(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert (await read_response(reader)).status == 404
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 200


async def test_other_method_is_405_with_allow_and_its_body_is_skipped(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    r = await read_response(reader)
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD"
    writer.write(
        b"DELETE /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert (await read_response(reader)).status == 405
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).body == b"ready\n"


@pytest.mark.parametrize(
    "target", [b"/healthz?probe=1", b"http://admin.example/healthz", b"http://admin.example/healthz?x"]
)
async def test_query_and_absolute_form_reach_the_path(admin: Served, target: bytes) -> None:
    r = await ask(admin, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (r.status, r.body) == (200, b"ok\n")


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"OPTIONS * HTTP/1.1", 404),  # asterisk-form: no endpoint
        (b"CONNECT example.com:80 HTTP/1.1", 404),  # authority-form: no endpoint, and closed
        (b"GET healthz HTTP/1.1", 400),  # not a target httptools takes
    ],
)
async def test_other_target_forms_reach_no_endpoint(admin: Served, request_line: bytes, status: int) -> None:
    r = await ask(admin, request_line + b"\r\nHost: x\r\n\r\n")
    assert r.status == status


async def test_awaitable_ready_is_awaited(admin: Served) -> None:
    admin.source.ready = False
    r = await ask(admin, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (r.status, r.body) == (503, b"no healthy upstream\n")
    assert admin.source.calls == ["ready"]


async def test_gathered_metrics_source_is_awaited() -> None:
    class Gathered:
        async def render(self) -> tuple[bytes, str]:
            await asyncio.sleep(0)
            return b"gathered 1\n", "text/plain; version=0.0.4; charset=utf-8"

    server = AdminServer(create_admin_app(metrics=Gathered(), ready=lambda: True))
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).body == b"gathered 1\n"
        writer.close()
    finally:
        await server.close()


async def test_a_failing_source_is_500_and_the_listener_keeps_serving(
    admin: Served, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> tuple[bytes, str]:
        raise RuntimeError("scrape failed")

    admin.source.render = broken  # type: ignore[method-assign]
    reader, writer = await admin.connect()
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 500
    assert "scrape failed" in caplog.text
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 200


# -- persistence --------------------------------------------------------------------------------------


async def test_http11_keeps_the_connection_for_many_scrapes(admin: Served) -> None:
    reader, writer = await admin.connect()
    for _ in range(5):
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).body == admin.source.body


async def test_pipelined_requests_are_answered_in_order(admin: Served) -> None:
    reader, writer = await admin.connect()
    paths = [b"/healthz", b"/readyz", b"/nope", b"/healthz"] * 10  # more than max_pipelined
    writer.write(b"".join(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % p for p in paths))
    statuses = [(await read_response(reader)).status for _ in paths]
    assert statuses == [404 if p == b"/nope" else 200 for p in paths]


async def test_connection_close_is_honoured(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    r = await read_response(reader)
    assert r.headers["connection"] == "close"
    assert await at_eof(reader)


async def test_http10_closes_unless_asked_to_keep_alive(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (await read_response(reader)).headers["connection"] == "close"
    assert await at_eof(reader)

    reader, writer = await admin.connect()
    writer.write(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert (await read_response(reader)).headers["connection"] == "keep-alive"
    writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
    assert (await read_response(reader)).body == b"ready\n"
    assert await at_eof(reader)


async def test_upgrade_is_answered_without_upgrading_then_closed(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    r = await read_response(reader)
    assert (r.status, r.headers["connection"]) == (200, "close")
    assert await at_eof(reader)


# -- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ],
)
async def test_malformed_request_is_400_and_closes(admin: Served, request_bytes: bytes) -> None:
    reader, writer = await admin.connect()
    writer.write(request_bytes)
    r = await read_response(reader)
    assert r.status == 400
    assert r.headers["connection"] == "close"
    assert await at_eof(reader)


async def test_unsupported_version_is_505(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 505
    assert await at_eof(reader)


async def test_answers_before_a_refusal_are_sent_first(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n")
    assert (await read_response(reader)).status == 200
    assert (await read_response(reader)).status == 400
    assert await at_eof(reader)


async def test_too_many_header_bytes_is_431(strict: Served) -> None:
    reader, writer = await strict.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 600 + b"\r\n\r\n")
    assert (await read_response(reader)).status == 431
    assert await at_eof(reader)


async def test_an_unfinished_header_line_is_bounded_too(strict: Served) -> None:
    # No CRLF ever comes: httptools would hold the line; the connection counts what it read.
    reader, writer = await strict.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Big: ")
    response: Response | None = None
    for _ in range(100):  # several reads, none ending the line, until the server refuses
        writer.write(b"a" * 200)
        await writer.drain()
        try:
            response = await asyncio.wait_for(read_response(reader), 0.02)
            break
        except TimeoutError:
            continue
    assert response is not None
    assert response.status == 431
    assert await at_eof(reader)


async def test_too_long_a_target_is_414(strict: Served) -> None:
    r = await ask(strict, b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 414


async def test_too_large_a_body_is_413(strict: Served) -> None:
    r = await ask(strict, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"b" * 100)
    assert r.status == 413


# -- timeouts and slow clients -------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_is_closed(strict: Served) -> None:
    reader, writer = await strict.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 200
    assert await at_eof(reader)  # no answer: the idle timeout closes it quietly


async def test_a_connection_that_never_asks_is_closed(strict: Served) -> None:
    reader, _ = await strict.connect()
    assert await at_eof(reader)


async def test_a_stalled_head_is_408(strict: Served) -> None:
    reader, writer = await strict.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert (await read_response(reader)).status == 408
    assert await at_eof(reader)


async def test_a_trickling_head_is_408_however_steadily_it_comes(strict: Served) -> None:
    # One byte at a time, each well inside the header timeout: the head as a whole is not.
    reader, writer = await strict.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    response: Response | None = None
    for _ in range(200):  # far more than the header timeout allows
        try:
            writer.write(b"X")
            await writer.drain()
        except ConnectionError:
            break
        try:
            response = await asyncio.wait_for(read_response(reader), 0.02)
            break
        except TimeoutError:
            continue
    if response is None:
        response = await read_response(reader)
    assert response.status == 408


async def test_a_client_that_never_reads_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    source = Source(body=b"x" * (16 << 20))  # more than both sockets' buffers
    limits = AdminLimits(send_timeout=0.2)
    server = AdminServer(create_admin_app(metrics=source, ready=lambda: True), limits=limits)
    await server.start("127.0.0.1", 0)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        await asyncio.get_running_loop().sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never read: the server gives up on it, and serves others all the while.
        for _ in range(500):
            if not server.connections:  # the dropped connection is gone
                break
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await read_response(reader)).status == 200
            assert await at_eof(reader)
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.02)
        assert server.connections == 0
        sock.close()
    finally:
        await asyncio.wait_for(server.close(), WAIT)


# -- shutdown -----------------------------------------------------------------------------------------


async def test_close_ends_idle_connections_at_once(admin: Served) -> None:
    reader, writer = await admin.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 200
    await asyncio.wait_for(admin.server.close(), WAIT)
    assert await at_eof(reader)


async def test_close_finishes_the_request_in_progress(admin: Served) -> None:
    admin.source.gate = asyncio.Event()
    reader, writer = await admin.connect()
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if admin.source.calls:
            break
        await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(admin.server.close())
    await asyncio.sleep(0.01)
    admin.source.gate.set()
    r = await read_response(reader)
    assert (r.status, r.headers["connection"]) == (200, "close")
    await asyncio.wait_for(closing, WAIT)
    assert await at_eof(reader)


async def test_close_drops_a_request_that_never_finishes() -> None:
    source = Source(gate=asyncio.Event())  # never set
    server = AdminServer(create_admin_app(metrics=source, ready=source.is_ready), shutdown_timeout=0.1)
    await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if source.calls:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(server.close(), WAIT)
    assert await at_eof(reader)
    writer.close()


# -- pieces ----------------------------------------------------------------------------------------------


def test_http_date_is_imf_fixdate() -> None:
    assert http_date(784111777) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert http_date(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.mark.parametrize(
    "bad",
    [{"max_header_bytes": 0}, {"max_pipelined": 0}, {"header_timeout": 0.0}, {"idle_timeout": float("inf")}],
)
def test_limits_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AdminLimits(**bad)  # type: ignore[arg-type]


def test_the_metrics_content_type_is_sent_whole() -> None:
    _, content_type = ProxyMetrics().render()
    assert "version=" in content_type
    assert "charset=utf-8" in content_type
