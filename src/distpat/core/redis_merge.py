"""Commands split over several servers (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH): the fragments'
replies merged into the one reply the client gets, and the commands that need no split."""

from __future__ import annotations

from distpat.core.redis_commands import COMMANDS, Kind
from distpat.core.resp import NULL_BULK, OK, ReplyScanner, array, error, integer

__all__ = ["SINGLE_KEY", "merge_replies"]


def _elements(reply: bytes) -> list[bytes]:
    """The elements of an array reply, as raw replies."""
    head = reply.index(b"\r\n") + 2
    return ReplyScanner().feed(reply[head:])


def merge_replies(name: bytes, count: int, fragments: list[tuple[list[int], bytes]]) -> bytes:
    """The reply to a split command: ``fragments`` pairs each fragment's key positions with its reply.

    MGET: the values in key order; a fragment that failed gives its error in
    place of each of its keys' values. DEL, UNLINK, EXISTS, TOUCH: the sum;
    MSET: OK. For those, any fragment's error is the whole command's error.
    """
    if name == b"mget":
        values: list[bytes] = [NULL_BULK] * count
        for positions, reply in fragments:
            if reply[:1] in (b"*",):
                elements = _elements(reply)
                if len(elements) != len(positions):
                    elements = [error("ERR server answered MGET with the wrong number of values")] * len(
                        positions
                    )
            else:
                elements = [reply] * len(positions)
            for i, value in zip(positions, elements, strict=True):
                values[i] = value
        return array(values)
    for _, reply in fragments:
        if reply[:1] in (b"-", b"!"):
            return reply
    if name == b"mset":
        return OK
    total = 0
    for _, reply in fragments:
        if reply[:1] != b":":
            return error("ERR server answered with an unexpected reply type")
        total += int(reply[1:-2])
    return integer(total)


SINGLE_KEY = frozenset(
    variant
    for name, spec in COMMANDS.items()
    if spec.kind is Kind.KEYS and spec.simple
    for variant in (name, name.upper())
)
"""Command names (lower or upper case) whose one key is their first argument: the short path."""
