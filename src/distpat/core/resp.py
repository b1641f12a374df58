"""The Redis protocol (RESP2 and RESP3), as a sharding proxy needs it: no I/O, no clock.

Requests are decoded into argument lists (:class:`RequestParser`), as Redis
reads them: multibulk (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``) or inline
(``GET k\\r\\n``). Replies are *not* decoded: :class:`ReplyScanner` only finds
where each one ends, so that the proxy forwards the bytes the server wrote, in
RESP2 or RESP3, untouched. Both work on whole batches: one call takes
everything a read brought and returns every complete command or reply in it.

:class:`~distpat.core.resp_fast.FastRequestParser` reads multibulk requests in C (hiredis), checked
to the same rules.

Malformed input raises :class:`~distpat.errors.RespProtocolError` with a
message in Redis's words (``invalid bulk length``, ...); the caller answers
``-ERR Protocol error: <message>`` and closes the connection, as Redis does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import hiredis

from distpat.errors import RespProtocolError

__all__ = [
    "MAX_ARGS",
    "MAX_LENGTH_LINE",
    "MIN_ARGUMENT",
    "Command",
    "command_bytes",
    "connection_setup",
    "pack_command",
    "RequestParser",
    "ReplyScanner",
    "encode_command",
    "error",
    "integer",
    "bulk",
    "array",
    "simple",
    "NULL_BULK",
    "OK",
]

Command = tuple[list[bytes], bytes | None]
"""A decoded command: its arguments, and its bytes as multibulk (what is forwarded) when the parser
kept them; None when they are to be packed again (:func:`command_bytes`)."""

MAX_ARGS = 1024 * 1024
"""Arguments one command may have (Redis's limit for a multibulk length)."""

_MAX_INLINE = 64 * 1024  # Redis refuses longer inline requests ("too big inline request")
MAX_LENGTH_LINE = 32
"""A count or length line longer than this is garbage (``*1048576`` and ``$536870912`` fit easily)."""
MIN_ARGUMENT = 6
"""The smallest argument's bytes (``$0``, CRLF, CRLF): a count whose arguments cannot fit the limit is
refused."""

OK = b"+OK\r\n"
NULL_BULK = b"$-1\r\n"


def simple(text: bytes) -> bytes:
    return b"+" + text + b"\r\n"


def error(message: str) -> bytes:
    """An error reply; ``message`` starts with its code (``ERR ...``); CR and LF become spaces."""
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(value: bytes | None) -> bytes:
    return NULL_BULK if value is None else b"$%d\r\n%b\r\n" % (len(value), value)


def array(items: Sequence[bytes]) -> bytes:
    """An array of already encoded replies."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def encode_command(args: Sequence[bytes]) -> bytes:
    """A command as a multibulk request."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n" % len(a))
        parts.append(a)
        parts.append(b"\r\n")
    return b"".join(parts)


def connection_setup(*, password: str | None = None, db: int = 0, proto: int = 2) -> list[bytes]:
    """What a new connection to a Redis server sends first, as the ambassador's and distpat's own
    client both do: ``HELLO 3`` (RESP3; with ``AUTH default PASSWORD``), else ``AUTH PASSWORD``; then
    ``SELECT DB`` unless it is 0. One reply comes for each; an error reply means the connection is
    not usable (a wrong password, a database out of range)."""
    setup: list[bytes] = []
    if proto == 3:
        hello = [b"HELLO", b"3"]
        if password:
            hello += [b"AUTH", b"default", password.encode()]
        setup.append(encode_command(hello))
    elif password:
        setup.append(encode_command([b"AUTH", password.encode()]))
    if db:
        setup.append(encode_command([b"SELECT", str(db).encode()]))
    return setup


pack_command: Callable[[tuple[bytes, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]
"""A command packed as multibulk, in C (hiredis's stub types it for one-element tuples only)."""


def command_bytes(command: Command) -> bytes:
    """A command's bytes as multibulk: as received, or packed again from its arguments (in C)."""
    raw = command[1]
    return raw if raw is not None else pack_command(tuple(command[0]))


def _number(line: bytes, what: str) -> int:
    """A length or count from a header line: ASCII digits (or -1), nothing else (``int()`` allows more)."""
    if line.isdigit() and len(line) <= 10:
        return int(line)
    if line == b"-1":
        return -1
    raise RespProtocolError(f"invalid {what}")


class _Buffered:
    """What a parser keeps between reads: the bytes of an incomplete item, and how many it needs."""

    __slots__ = ("_buf", "_need", "_limit")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._need = 0  # bytes the buffered incomplete item needs at least
        self._limit = limit

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete item."""
        return len(self._buf)

    def _take(self, data: bytes) -> bytes | None:
        """``data`` with what was held before it; None while the held item cannot be complete yet."""
        if not self._buf:
            return data
        self._buf += data
        if len(self._buf) < self._need:
            return None
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def _keep(self, data: bytes, pos: int, what: str) -> None:
        """Hold ``data[pos:]``, the start of an incomplete item, unless it is already over the limit."""
        if pos < len(data):
            if len(data) - pos > self._limit:
                raise RespProtocolError(f"{what} larger than {self._limit} bytes")
            self._buf += data[pos:] if pos else data


class RequestParser(_Buffered):
    """Client bytes in, argument lists out; keeps an incomplete command for the next read.

    ``max_request_bytes`` bounds one command's size (and so what is held for
    an incomplete one): past it, :class:`RespProtocolError`.
    """

    __slots__ = ("max_request_bytes",)

    def __init__(self, max_request_bytes: int = 512 * 1024 * 1024) -> None:
        super().__init__(max_request_bytes)
        self.max_request_bytes = max_request_bytes

    def feed(self, data: bytes) -> list[Command]:
        """Every complete command in what has arrived, in order, each with its bytes.

        Raises:
            RespProtocolError: the input is not RESP; its ``commands`` attribute
                holds the complete commands that came before the fault.
        """
        whole = self._take(data)
        if whole is None:
            return []
        data = whole
        out: list[Command] = []
        try:
            pos = self._parse(data, out)
        except RespProtocolError as exc:
            exc.commands = out  # type: ignore[attr-defined]
            raise
        self._keep(data, pos, "request")
        return out

    def _parse(self, data: bytes, out: list[Command]) -> int:
        """Append the complete commands of ``data`` to ``out``; return where the incomplete one starts."""
        n = len(data)
        pos = 0
        find = data.find
        limit = self.max_request_bytes
        while pos < n:
            if data[pos] != 42:  # not '*': an inline command
                end = find(b"\n", pos)
                if end < 0:
                    if n - pos > _MAX_INLINE:
                        raise RespProtocolError("too big inline request")
                    self._need = n - pos + 1
                    return pos
                args = data[pos:end].rstrip(b"\r").split()
                pos = end + 1
                if args:
                    out.append((args, encode_command(args)))
                continue
            crlf = find(b"\r\n", pos)
            if crlf < 0:
                if n - pos > MAX_LENGTH_LINE:
                    raise RespProtocolError("invalid multibulk length")
                self._need = n - pos + 1
                return pos
            line = data[pos + 1 : crlf]
            count = int(line) if line.isdigit() and len(line) <= 8 else _number(line, "multibulk length")
            if count > MAX_ARGS or count * MIN_ARGUMENT > limit:
                raise RespProtocolError("invalid multibulk length")
            p = crlf + 2
            args = []
            need = 0  # bytes from pos this command needs at least, once it is known incomplete
            for _ in range(count):
                if p >= n:
                    need = p - pos + 4  # the next length line ("$0\r\n" at least), checked once it comes
                    break
                if data[p] != 36:  # '$'
                    raise RespProtocolError(f"expected '$', got '{chr(data[p])}'")
                crlf = find(b"\r\n", p)
                if crlf < 0:
                    if n - p > MAX_LENGTH_LINE:
                        raise RespProtocolError("invalid bulk length")
                    need = n - pos + 1
                    break
                line = data[p + 1 : crlf]
                if not line.isdigit() or len(line) > 10:
                    raise RespProtocolError("invalid bulk length")
                size = int(line)
                if size > limit:
                    raise RespProtocolError("invalid bulk length")
                end = crlf + 2 + size
                if end + 2 > n:
                    need = end + 2 - pos
                    break
                if data[end : end + 2] != b"\r\n":
                    raise RespProtocolError("bulk string not terminated by CRLF")
                args.append(data[crlf + 2 : end])
                p = end + 2
            else:
                if args:  # "*0" and "*-1" are skipped, as Redis does
                    out.append((args, data[pos:p]))
                pos = p
                continue
            if need > limit:
                raise RespProtocolError(f"request larger than {limit} bytes")
            self._need = need
            return pos
        self._need = 0
        return pos


# Reply types whose header line is the whole reply, and aggregates with their element factor.
_LINE_TYPES = frozenset(b"+-:_,#(")
_BLOB_TYPES = frozenset(b"$!=")
_AGGREGATES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}


class ReplyScanner(_Buffered):
    """Server bytes in, one bytes object per complete reply out (RESP2 and RESP3).

    Nothing is decoded beyond the framing. A RESP3 attribute (``|``) is kept
    with the reply it annotates, as one.
    """

    __slots__ = ("max_reply_bytes",)

    def __init__(self, max_reply_bytes: int = 512 * 1024 * 1024) -> None:
        super().__init__(max_reply_bytes)
        self.max_reply_bytes = max_reply_bytes

    def feed(self, data: bytes) -> list[bytes]:
        data, ends = self.scan(data)
        out: list[bytes] = []
        start = 0
        for end in ends:
            out.append(data[start:end])
            start = end
        return out

    def scan(self, data: bytes) -> tuple[bytes, list[int]]:
        """:meth:`feed`, in a cheaper shape: a buffer, and where each complete reply in it ends.

        The first reply starts at 0, each next one where the one before ended, so a run of
        replies is one slice (``buf[ends[i - 1]:ends[j]]``) and no reply is cut out on its own.
        """
        whole = self._take(data)
        if whole is None:
            return b"", []
        data = whole
        out: list[int] = []
        n = len(data)
        pos = 0
        find = data.find
        while pos < n:
            kind = data[pos]
            if kind == 43 or kind == 58 or kind == 45:  # '+', ':', '-': one line (the usual replies)
                end = find(b"\r\n", pos) + 2
                if end == 1:
                    self._need = n - pos + 1
                    break
            elif kind == 36:  # '$': a bulk string
                crlf = find(b"\r\n", pos)
                if crlf < 0:
                    self._need = n - pos + 1
                    break
                line = data[pos + 1 : crlf]
                if line.isdigit():
                    end = crlf + 4 + int(line)
                    if end > n:
                        self._need = end - pos
                        break
                elif line == b"-1":
                    end = crlf + 2
                else:
                    raise RespProtocolError("invalid bulk length")
            else:
                end = self._end(data, pos, n)
                if end < 0:
                    self._need -= pos  # _end set it as an index of data; the buffer starts at pos
                    break
            out.append(end)
            pos = end
        self._keep(data, pos, "reply")
        return data, out

    def _end(self, data: bytes, pos: int, n: int) -> int:
        """Where the reply starting at ``pos`` ends, or -1 if it is incomplete (setting ``_need``)."""
        pending = 1  # replies still to skip
        find = data.find
        while pending:
            if pos >= n:
                self._need = n + 1
                return -1
            kind = data[pos]
            crlf = find(b"\r\n", pos)
            if crlf < 0:
                self._need = n + 1
                return -1
            pending -= 1
            if kind in _LINE_TYPES:
                pos = crlf + 2
            elif kind in _BLOB_TYPES:
                size = _number(data[pos + 1 : crlf], "bulk length")
                if size < 0:
                    pos = crlf + 2
                else:
                    end = crlf + 2 + size + 2
                    if end > n:
                        self._need = end
                        return -1
                    pos = end
            elif kind in _AGGREGATES:
                count = _number(data[pos + 1 : crlf], "multibulk length")
                pos = crlf + 2
                if count > 0:
                    pending += count * _AGGREGATES[kind]
                if kind == 124:  # '|': attributes, then the reply they describe
                    pending += 1
            else:
                raise RespProtocolError(f"unknown reply type {chr(kind)!r}")
        return pos
