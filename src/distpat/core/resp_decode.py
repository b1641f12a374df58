"""Redis replies decoded to values, for distpat's own client (:mod:`distpat.net.resp_client`).

The ambassador forwards replies untouched and only frames them (:class:`~distpat.core.resp.ReplyScanner`);
a client wants their values. :class:`ReplyDecoder` frames with the same scanner, so a reply is held to
the same size limit and a malformed one is refused the same way, then decodes each complete reply with
hiredis's C reader, which never sees an incomplete one. RESP2 values: a simple or bulk string is
``bytes``, an integer ``int``, a null ``None``, an array a ``list`` of values; an error reply is an
:class:`ErrorReply`. (RESP3 adds ``float``, ``bool``, ``dict`` and sets as lists, as hiredis decodes
them.) No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import hiredis

from distpat.core.resp import ReplyScanner
from distpat.errors import RespProtocolError

__all__ = ["ErrorReply", "ReplyDecoder"]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error reply (``-ERR unknown command``): its text, code first (``ERR unknown command``)."""

    message: str


class ReplyDecoder:
    """Server bytes in, every complete reply out, decoded (see the module's docstring).

    :meth:`feed` raises :class:`~distpat.errors.RespProtocolError` for a malformed reply or one over
    ``max_reply_bytes``; after that the stream cannot be trusted, and the connection should go.
    """

    __slots__ = ("_reader", "_scanner")

    def __init__(self, max_reply_bytes: int = 512 * 1024 * 1024) -> None:
        self._scanner = ReplyScanner(max_reply_bytes)
        # hiredis calls replyError with the text; its stub asks for an exception class, any callable works
        self._reader = hiredis.Reader(replyError=ErrorReply)  # type: ignore[arg-type]

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete reply."""
        return self._scanner.buffered

    def feed(self, data: bytes) -> list[object]:
        buf, ends = self._scanner.scan(data)
        if not ends:
            return []
        reader = self._reader
        reader.feed(buf, 0, ends[-1])
        out: list[object] = []
        try:
            for _ in ends:
                value = reader.gets()
                if value is False:  # framed whole by the scanner, but not by hiredis
                    raise RespProtocolError("a reply hiredis could not read")
                out.append(value)
        except hiredis.ProtocolError as exc:
            raise RespProtocolError(str(exc).removeprefix("Protocol error, ")) from None
        except TypeError as exc:  # a RESP3 map keyed by an array: no dict can hold it
            raise RespProtocolError(f"a reply that cannot be decoded: {exc}") from None
        return out
