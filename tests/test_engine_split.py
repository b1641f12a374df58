"""The engine parses whatever way the bytes arrive: any split of a valid request forwards the same bytes.

The engine is driven with in-memory transports (no sockets), so hypothesis can
try many requests and many splits quickly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from hypothesis import given
from hypothesis import strategies as st

from distpat.net.proxy import ProxyConfig, ProxyServer
from distpat.net.server import ClientConnection
from distpat.net.upstream import UpstreamConnection


class MemoryTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda t: (
        t.strip("-") != ""
        and t
        not in (
            "connection",
            "transfer-encoding",
            "content-length",
            "expect",
            "te",
            "trailer",
            "upgrade",
            "keep-alive",
            "host",
        )
    )
)
value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ;=/.,", max_size=20).map(str.strip)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]))
    target = b"/" + draw(st.text(alphabet="abc123/?=&", max_size=20)).encode()
    headers = [(b"Host", b"example.test")]
    headers += [(n.encode(), v.encode()) for n, v in draw(st.lists(st.tuples(token, value), max_size=6))]
    body = draw(st.binary(max_size=300)) if method != b"GET" else b""
    head = b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(b"%s: %s\r\n" % h for h in headers)
    if body and draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 64), min_size=1, max_size=8))
        chunks, rest = [], body
        for size in sizes:
            if not rest:
                break
            chunks.append(rest[:size])
            rest = rest[size:]
        if rest:
            chunks.append(rest)
        wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + wire, body
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body, body


def forward(raw: bytes, cuts: list[int]) -> bytes:
    """What the upstream receives when ``raw`` arrives in pieces cut at ``cuts``."""

    async def run() -> bytes:
        server = ProxyServer(ProxyConfig(listen=("127.0.0.1", 0), upstreams=("http://127.0.0.1:9",)))
        upstream = server.group.upstreams[0]
        conn = UpstreamConnection(upstream)
        upstream_side = MemoryTransport()
        conn.connection_made(upstream_side)  # type: ignore[arg-type]
        upstream.open.add(conn)
        upstream.idle.append(conn)
        client = ClientConnection(server.state)
        client.connection_made(MemoryTransport())  # type: ignore[arg-type]
        start = 0
        for cut in [*sorted(set(cuts)), len(raw)]:
            if start < cut <= len(raw):
                client.data_received(raw[start:cut])
                start = cut
        await asyncio.sleep(0)  # the end of the turn: what was written is sent (distpat.net.batch)
        client.connection_lost(None)
        return bytes(upstream_side.data)

    return asyncio.run(run())


class _Parsed:
    def __init__(self) -> None:
        self.body = b""
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def message(wire: bytes) -> tuple[bytes, bytes]:
    """The head, byte for byte, and the decoded body of the one request in ``wire``."""
    head = wire[: wire.index(b"\r\n\r\n") + 4]
    parsed = _Parsed()
    httptools.HttpRequestParser(parsed).feed_data(wire)
    assert parsed.done
    return head, parsed.body


@given(request=requests(), data=st.data())
def test_any_split_forwards_the_same_request(request: tuple[bytes, bytes], data: st.DataObject) -> None:
    raw, body = request
    whole = forward(raw, [])
    head, forwarded_body = message(whole)
    assert forwarded_body == body
    assert b"\r\nVia: 1.1 distpat\r\n" in head
    assert b"\r\nX-Forwarded-For: 192.0.2.7\r\n" in head
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=12))
    # The same head byte for byte and the same body; a chunked body may be re-chunked
    # differently (pieces are forwarded as they arrive), a Content-Length body is identical.
    for split in (forward(raw, cuts), forward(raw, list(range(1, len(raw))))):
        assert message(split) == (head, body)
        if b"Content-Length" in head:
            assert split == whole


def test_a_response_kept_for_the_turn_goes_out_when_the_client_half_closes() -> None:
    """The upstream's answer and the client's FIN handled in one event-loop turn: nothing is lost."""

    async def run() -> bytes:
        server = ProxyServer(ProxyConfig(listen=("127.0.0.1", 0), upstreams=("http://127.0.0.1:9",)))
        upstream = server.group.upstreams[0]
        conn = UpstreamConnection(upstream)
        conn.connection_made(MemoryTransport())  # type: ignore[arg-type]
        upstream.open.add(conn)
        upstream.idle.append(conn)
        client_side = MemoryTransport()
        client = ClientConnection(server.state)
        client.connection_made(client_side)  # type: ignore[arg-type]
        client.data_received(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        await asyncio.sleep(0)  # the request reaches the upstream
        # In one turn: the whole response arrives (kept for the end of the turn), then the FIN.
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        assert client.eof_received() is None  # nothing left to answer: the event loop closes the transport
        client_side.close()
        await asyncio.sleep(0)
        return bytes(client_side.data)

    assert asyncio.run(run()).endswith(b"\r\n\r\nhello")
