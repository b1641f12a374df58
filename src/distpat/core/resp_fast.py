"""Client requests read by hiredis's C reader, held to :class:`~distpat.core.resp.RequestParser`'s rules.

hiredis parses replies, ten times faster than Python can parse requests, but is more lenient with requests
than Redis is and waits for every byte a length announces. :class:`FastRequestParser` packs every command
it returns again and compares the bytes (anything else is a protocol error), and :class:`_LengthCheck`
reads the length lines of an incomplete command as they arrive, refusing one over the limit at once, as
redis-server does. No I/O, no clock.
"""

from __future__ import annotations

import re

import hiredis

from distpat.core.resp import (
    MAX_ARGS,
    MAX_LENGTH_LINE,
    MIN_ARGUMENT,
    Command,
    RequestParser,
    pack_command,
)
from distpat.errors import RespProtocolError

__all__ = ["FastRequestParser"]

_LONG_COUNT = re.compile(rb"\*[0-9]{7}")  # an array count of a million or more

_BULK_HEADS = [b"$%d\r\n" % size for size in range(1024)]
"""The header of a bulk string of each size under 1 KiB. A command of one to three such arguments is
packed again from them, in Python, cheaper than by hiredis.pack_command, which formats each length with
sprintf; a command with anything but bytes in it (len() or the join refuses it), a longer one or one of
more arguments is packed by pack_command, so every command is packed to the same bytes, and refused
with the same words."""


class FastRequestParser:
    """:class:`RequestParser` for multibulk requests, decoded by hiredis's C reader (ten times faster).

    hiredis reads replies, and is more lenient than Redis is with requests (a
    ``+simple`` string where a bulk string belongs, no CRLF check after a bulk
    string). So every command it returns is packed again (in C), and the
    packed bytes must be exactly the bytes the client sent: anything else is a
    protocol error, as Redis would answer. Redis's inline form (``GET
    k\\r\\n``) is not read here: a connection whose first byte is not ``*``
    should use :class:`RequestParser` (the caller decides on the first read).
    """

    __slots__ = ("_fallback", "_pending", "_reader", "_scan", "max_request_bytes")

    def __init__(self, max_request_bytes: int = 512 * 1024 * 1024) -> None:
        self._reader = hiredis.Reader()
        self._pending = bytearray()  # what the client sent that no command has accounted for yet
        self._fallback: RequestParser | None = None
        self._scan = _LengthCheck(max_request_bytes)
        self.max_request_bytes = max_request_bytes

    @property
    def buffered(self) -> int:
        return len(self._pending) if self._fallback is None else self._fallback.buffered

    def feed(self, data: bytes) -> list[Command]:
        if self._fallback is not None:
            return self._fallback.feed(data)
        reader = self._reader
        pending = self._pending
        if _LONG_COUNT.search(bytes(pending[-MAX_LENGTH_LINE:]) + data if pending else data):
            # hiredis allocates an array's whole list when it reads the count: a count of millions
            # (perhaps only inside a value: the pattern cannot tell) sends this client to the
            # Python parser, which checks counts against MAX_ARGS first.
            self._fallback = RequestParser(self.max_request_bytes)
            return self._fallback.feed(bytes(pending) + data)
        pending += data
        out: list[Command] = []
        packed: list[bytes] = []
        join = b"".join
        heads = _BULK_HEADS
        try:
            reader.feed(data)
            gets = reader.gets
            command = gets()
            while command is not False:
                if command.__class__ is list:
                    n = len(command)
                    if n > 3 or not n:
                        raw = pack_command(tuple(command)) if n else b"*0\r\n"
                    else:  # packed here, as pack_command would (see _BULK_HEADS)
                        try:
                            if n == 3:
                                x, y, z = command
                                hx, hy, hz = heads[len(x)], heads[len(y)], heads[len(z)]
                                raw = join((b"*3\r\n", hx, x, b"\r\n", hy, y, b"\r\n", hz, z, b"\r\n"))
                            elif n == 2:
                                x, y = command
                                raw = join((b"*2\r\n", heads[len(x)], x, b"\r\n", heads[len(y)], y, b"\r\n"))
                            else:
                                x = command[0]
                                raw = join((b"*1\r\n", heads[len(x)], x, b"\r\n"))
                        except (TypeError, IndexError):  # not bytes, or long: as hiredis packs it
                            raw = pack_command(tuple(command))
                    if n:
                        out.append((command, raw))
                elif command is None:
                    raw = b"*-1\r\n"  # skipped, as Redis does
                else:
                    raise RespProtocolError("expected '*'")
                packed.append(raw)
                command = gets()
        except hiredis.ProtocolError as exc:
            self._check(packed, out)
            raise self._fault(_redis_words(str(exc)), out) from None
        except (RespProtocolError, TypeError):  # TypeError: an argument that is not a bulk string
            self._check(packed, out)
            nil = command.__class__ is list and None in command  # "$-1": no length Redis accepts
            raise self._fault("invalid bulk length" if nil else "expected '$'", out) from None
        self._check(packed, out)
        if pending:  # an incomplete command: its lengths are checked as they arrive, not its bytes
            try:
                self._scan.check(pending)
            except RespProtocolError as exc:
                raise self._fault(str(exc), out) from None
        return out

    def _check(self, packed: list[bytes], out: list[Command]) -> None:
        """The commands' bytes must be what was sent, byte for byte: drop them from ``_pending``."""
        if not packed:
            return
        joined = b"".join(packed)
        size = len(joined)
        pending = self._pending
        if pending[:size] != joined:
            offset = good = 0
            for raw in packed:  # keep the commands before the first one that differs
                if pending[offset : offset + len(raw)] != raw:
                    break
                offset += len(raw)
                good += 1
            commands = sum(1 for raw in packed[:good] if raw not in (b"*0\r\n", b"*-1\r\n"))
            del out[commands:]
            raise self._fault(
                "invalid multibulk request (expected '$' and CRLF-terminated bulk strings)", out
            )
        del pending[:size]
        self._scan.reset()

    @staticmethod
    def _fault(message: str, out: list[Command]) -> RespProtocolError:
        error = RespProtocolError(message)
        error.commands = out  # type: ignore[attr-defined]
        return error


def _redis_words(message: str) -> str:
    """hiredis's message for a bad length (past 2^63, which it reads before :class:`_LengthCheck` can) in
    Redis's words; other messages as hiredis gives them."""
    lowered = message.lower()
    if "multi-bulk length" in lowered:
        return "invalid multibulk length"
    if "bulk string length" in lowered or "bulk length" in lowered:
        return "invalid bulk length"
    return message.removeprefix("Protocol error, ")


class _LengthCheck:
    """The headers of the incomplete command a :class:`FastRequestParser` holds, checked as they arrive.

    hiredis waits for every byte a length announces; Redis refuses a length over its limit as soon as it
    reads it (``invalid bulk length``, ``invalid multibulk length``), and so does this: only headers
    are read, each once (the bodies between them are skipped), so a large value costs nothing here.
    """

    __slots__ = ("_at", "_left", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.reset()

    def reset(self) -> None:
        """A new command starts at the beginning of the buffer."""
        self._at = 0  # where the next header starts
        self._left = -1  # bulk strings still to come; -1 before the count line

    def check(self, buf: bytearray) -> None:
        n = len(buf)
        at = self._at
        limit = self._limit
        find = buf.find
        if self._left < 0:
            if buf[0] != 42:  # not '*': hiredis reports it
                return
            crlf = find(b"\r\n", 0, MAX_LENGTH_LINE + 2)
            if crlf < 0:
                if n > MAX_LENGTH_LINE:
                    raise RespProtocolError("invalid multibulk length")
                return
            line = bytes(buf[1:crlf])
            if not line.isdigit() or len(line) > 10:
                return  # "*-1" and garbage: hiredis and the byte check answer them
            count = int(line)
            if count > MAX_ARGS or count * MIN_ARGUMENT > limit:
                raise RespProtocolError("invalid multibulk length")
            self._left = count
            at = crlf + 2
        left = self._left
        while left > 0 and at < n:
            if buf[at] != 36:  # not '$': the byte check answers it once hiredis reads it
                break
            crlf = find(b"\r\n", at, at + MAX_LENGTH_LINE + 2)
            if crlf < 0:
                if n - at > MAX_LENGTH_LINE:
                    raise RespProtocolError("invalid bulk length")
                break
            line = bytes(buf[at + 1 : crlf])
            if not line.isdigit() or len(line) > 10 or int(line) > limit:
                raise RespProtocolError("invalid bulk length")
            at = crlf + 4 + int(line)
            left -= 1
            if at + left * MIN_ARGUMENT > limit:
                raise RespProtocolError(f"request larger than {limit} bytes")
        self._at = at
        self._left = left
        if n > limit:
            raise RespProtocolError(f"request larger than {limit} bytes")
