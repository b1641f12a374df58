"""The chunk-size lines of a chunked request body (RFC 9112 section 7.1), found after each read.

llhttp parses the chunked coding but tells its caller neither a chunk's size nor its extensions:
only that a size line ended (``on_chunk_header``), the data (``on_body``) and that the data's CRLF
ended (``on_chunk_complete``). So a chunk announced as larger than the body limit, or a size line
with endless extensions, would be read and waited for. :class:`ChunkLines` finds those lines in
the bytes of each read once llhttp has parsed them, working back from the end of the read with
the callbacks' counts: the open chunk's data is the read's tail, each completed chunk is its data
and CRLF, and a size line holds no LF (llhttp requires CRLF and no LF in a quoted extension), so
the LF before it ends whatever came first -- the head, the CRLF after a chunk, or an earlier read.
It never looks at the bytes of chunk data, only at a window of at most :data:`MAX_CHUNK_LINE`
bytes before each size line's end, and costs nothing for a request that is not chunked.

:func:`check_chunk_line` then applies the limits: a line longer than :data:`MAX_CHUNK_LINE`
(nginx refuses a size line past its ``client_header_buffer_size``, 1 KiB) is 400, a size larger
than what the body may still hold is 413, as soon as its digits are read.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from distpat.errors import RemoteProtocolError

__all__ = ["MAX_CHUNK_LINE", "ChunkLines", "check_chunk_line", "is_size_line"]

MAX_CHUNK_LINE: Final = 4096
"""Bytes a chunk-size line (size and extensions, without its CRLF) may have."""

_SIZE: Final = re.compile(rb"([0-9A-Fa-f]+)(?:;|$)")  # chunk-size, then an extension or the end
_HEX_PREFIX: Final = re.compile(rb"[0-9A-Fa-f]*")
_TRAILER_LINES: Final = 64  # complete trailer lines looked back over for the last chunk's line
_LF: Final = 10
_CR: Final = 13


def _refuse_size(digits: bytes, allowed: int) -> None:
    digits = digits.lstrip(b"0")
    if len(digits) > 16 or (digits and int(digits, 16) > allowed):
        shown = digits[:20].decode("ascii")
        raise RemoteProtocolError(f"chunk of 0x{shown} bytes is larger than the body may be", status=413)


def check_chunk_line(line: bytes, allowed: int, *, ended: bool) -> None:
    """Refuse a chunk-size line (``ended``) or the start of one (not ``ended``) past the limits.

    ``allowed`` is how many more body bytes the request may send. Before its CRLF, the digits a
    line has so far already bound its size from below (more digits only make it larger).

    Raises:
        RemoteProtocolError: 400 for a line longer than :data:`MAX_CHUNK_LINE`, 413 for a size
            larger than ``allowed``.
    """
    if len(line) > MAX_CHUNK_LINE:
        raise RemoteProtocolError(
            f"chunk size line (with extensions) longer than {MAX_CHUNK_LINE} bytes", status=400
        )
    if ended:
        match = _SIZE.match(line)
        if match is not None:
            _refuse_size(match.group(1), allowed)
    else:
        match = _HEX_PREFIX.match(line)
        assert match is not None  # it matches the empty string
        _refuse_size(match.group(), allowed)


def is_size_line(line: bytes) -> bool:
    """Whether ``line`` reads as ``chunk-size [; extensions]`` (a trailer field line never does)."""
    return _SIZE.match(line) is not None


class ChunkLines:
    """The size lines of one chunked body, read by read (see the module docstring).

    The engine reports llhttp's chunk callbacks with the body bytes received so far
    (:meth:`header`, :meth:`complete`) and, once each read is parsed, calls :meth:`check`.
    ``carried`` is the start of a size line that the previous read ended in, at most
    :data:`MAX_CHUNK_LINE` + 1 bytes (longer is refused by :func:`check_chunk_line`).
    """

    __slots__ = ("carried", "mark", "open", "began_open", "done")

    def __init__(self) -> None:
        self.carried = b""
        self.mark = 0  # body bytes received before the open chunk's data
        self.open = False  # inside a chunk's data (between on_chunk_header and on_chunk_complete)
        self.began_open = False  # ... when the read being parsed began
        self.done: list[int] = []  # data lengths of the chunks completed in the read being parsed

    def header(self, received: int) -> None:
        """A size line ended (``on_chunk_header``); ``received``: body bytes so far."""
        self.mark, self.open = received, True

    def complete(self, received: int) -> None:
        """A chunk's data and CRLF ended (``on_chunk_complete``)."""
        self.done.append(received - self.mark)
        self.open = False

    def check(self, data: bytes | memoryview, received: int, limit: int) -> None:
        """After a read is parsed: refuse what it shows of the size lines (:func:`check_chunk_line`).

        ``received`` is the body bytes so far, ``limit`` the most the body may have.

        Raises:
            RemoteProtocolError: 400 or 413, see :func:`check_chunk_line`.
        """
        lines, partial, opened = self.read(data, received)
        for i, line in enumerate(lines):
            check_chunk_line(line, limit - self.mark if opened and i == 0 else limit, ended=True)
        if partial is not None:
            check_chunk_line(partial, limit - received, ended=False)

    def read(self, data: bytes | memoryview, received: int) -> tuple[list[bytes], bytes | None, bool]:
        """:meth:`after_read` for the read just parsed, from the callbacks reported during it; the
        third value says whether the newest line is the open chunk's (its data still to come)."""
        done, began_open = self.done, self.began_open
        self.done, self.began_open = [], self.open
        open_got = received - self.mark if self.open else -1
        lines, partial = self.after_read(data, done, open_got, began_open)
        return lines, partial, open_got >= 0 and (bool(done) or not began_open)

    def _byte(self, data: bytes | memoryview, at: int) -> int:
        if at >= 0:
            return data[at]
        return self.carried[at] if len(self.carried) >= -at else -1

    def _line_before(self, data: bytes | memoryview, end: int) -> tuple[bytes, int]:
        """The size line whose CRLF ends at ``end`` (without the CRLF), and where it starts."""
        base = max(0, end - 2 - MAX_CHUNK_LINE - 1)
        window = bytes(data[base : max(0, end - 2)])
        lf = window.rfind(b"\n")
        if lf >= 0:
            return window[lf + 1 :], base + lf + 1
        if base > 0:  # no LF within the limit: too long, whatever comes before
            return window, base
        line = self.carried + window  # the line began in the previous read
        if end < 2:  # and so did its CR
            line = line[: len(line) - (2 - end)]
        return line, 0

    def _last_size_line(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """The last line of ``data`` that reads as a size line, back over complete trailer lines."""
        end = n = len(data)
        if not (self._byte(data, n - 1) == _LF and self._byte(data, n - 2) == _CR):
            tail = bytes(data[max(0, n - MAX_CHUNK_LINE - 1) :])
            end = n - len(tail) + tail.rfind(b"\n") + 1  # past the last LF: a trailer line begun
        line, start = self._line_before(data, end)
        for _ in range(_TRAILER_LINES):
            # a line past the limit is refused as it is: never looked past as if it were a trailer
            # field (the size line of a chunk whose data is still to come can look like one)
            if is_size_line(line) or start <= 0 or len(line) > MAX_CHUNK_LINE:
                break
            line, start = self._line_before(data, start)
        return line, start

    def after_read(
        self, data: bytes | memoryview, completed: Sequence[int], open_got: int, began_in_data: bool
    ) -> tuple[list[bytes], bytes | None]:
        """The size lines that ended in this read, newest first, and the line the read ends in.

        ``completed``: the data lengths of the chunks whose CRLF ended in this read, in order.
        ``open_got``: -1 when the read ends outside chunk data, else the data bytes of the open
        chunk so far. ``began_in_data``: the read began inside a chunk's data (or its CRLF).

        The second value is the start of the size line the read ends in, if it does (it is kept
        for the next read), else None. Lines are found back to the first that does not read as a
        size line: after a last chunk (size 0), trailer fields (which never do) end the search.
        """
        n = len(data)
        lines: list[bytes] = []
        partial: bytes | None = None
        own = len(completed) - 1 if began_in_data and completed else len(completed)
        if open_got < 0:
            tail = bytes(data[max(0, n - MAX_CHUNK_LINE - 1) :])
            lf = tail.rfind(b"\n")
            began_before = lf < 0 and not completed and n <= MAX_CHUNK_LINE  # in the previous read
            partial = self.carried + tail if began_before else tail[lf + 1 :]
            boundary = n - len(partial)
            if lf < 0:  # began in the previous read, or is too long: no line ended before it here
                self.carried = partial[: MAX_CHUNK_LINE + 1]
                return lines, partial
        else:
            boundary = n
            if not (began_in_data and not completed):  # the open chunk's size line ended in this read
                if open_got == 0:  # it may be the last chunk's, and trailer fields follow it
                    line, boundary = self._last_size_line(data)
                else:
                    end = n - open_got
                    if not (self._byte(data, end - 1) == _LF and self._byte(data, end - 2) == _CR):
                        end -= 1  # all its data came, and the CR after it
                    line, boundary = self._line_before(data, end)
                lines.append(line)
                if not is_size_line(line):
                    self.carried = b""
                    return lines, None
        for got in reversed(completed[len(completed) - own :]):  # data and CRLF end at the next line
            line, boundary = self._line_before(data, boundary - 2 - got)
            lines.append(line)
            if len(line) > MAX_CHUNK_LINE or not is_size_line(line):
                break  # refused, or not a size line: nothing before it can be placed
        self.carried = b"" if partial is None else partial[: MAX_CHUNK_LINE + 1]
        return lines, partial
