"""Responses read back exactly as they came over the wire, framed by RFC 9112 section 6.

:mod:`tests.httpkit`'s reader hands every response to httptools, which cannot know that a
response answered a HEAD; these helpers take the request methods, so a test can pipeline HEAD,
204 and 304 with other requests on one connection and check every byte of what came back:
no body where none is allowed, and nothing left over after the last response.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Wire", "dead_url", "parse_wire", "read_wire"]


@dataclass(frozen=True, slots=True)
class Wire:
    """One response as received: status, fields in order, body (de-chunked)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]

    def names(self) -> set[bytes]:
        return {n.lower() for n, _ in self.headers}


def _chunked(data: bytes) -> tuple[bytes, int] | None:
    """A chunked body at the start of ``data``, and its length on the wire; None when incomplete."""
    body, at = b"", 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(data[at:line_end].split(b";")[0], 16)
        at = line_end + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", at - 2)  # no trailer fields expected
            return (body, end + 4) if end >= 0 else None
        if len(data) < at + size + 2:
            return None
        body += data[at : at + size]
        at += size + 2


def parse_wire(data: bytes, methods: Sequence[bytes], *, closed: bool = False) -> tuple[list[Wire], bytes]:
    """The responses at the start of ``data`` to requests made with ``methods``, in order, and
    what is left. Interim (1xx) responses come back too, answering no request of their own.
    A body delimited by the close is complete only when ``closed``."""
    out: list[Wire] = []
    pending = list(methods)
    while pending:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = data[:end].split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        fields = tuple((n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:]))
        rest = data[end + 4 :]
        wire = Wire(status, fields, b"")
        if status < 200:
            out.append(wire)
            data = rest
            continue
        method = pending[0]
        if method == b"HEAD" or status in (204, 304):
            used = 0
        elif wire.header(b"transfer-encoding") is not None:
            got = _chunked(rest)
            if got is None:
                break
            body, used = got
            wire = Wire(status, fields, body)
        elif wire.header(b"content-length") is not None:
            used = int(wire.header(b"content-length") or b"0")
            if len(rest) < used:
                break
            wire = Wire(status, fields, rest[:used])
        elif closed:
            used = len(rest)
            wire = Wire(status, fields, rest)
        else:
            break
        out.append(wire)
        pending.pop(0)
        data = rest[used:]
    return out, data


async def read_wire(
    reader: asyncio.StreamReader, methods: Sequence[bytes], timeout: float = 5.0
) -> tuple[list[Wire], bytes, bool]:
    """Read until the responses to ``methods`` are in (or the peer closes, or ``timeout``): the
    responses, the bytes left over, and whether the peer closed."""
    data, closed = b"", False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                got, _ = parse_wire(data, methods, closed=False)
                if sum(w.status >= 200 for w in got) == len(methods):
                    break
                try:
                    more = await reader.read(65536)
                except ConnectionError:
                    more = b""
                if not more:
                    closed = True
                    break
                data += more
    got, rest = parse_wire(data, methods, closed=closed)
    return got, rest, closed


def dead_url() -> str:
    """The URL of a 127.0.0.1 port nothing listens on (bound for a moment, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
