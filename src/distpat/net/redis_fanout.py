"""Commands split over several servers (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH): merging the fragments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distpat.core.redis_commands import COMMANDS, Kind
from distpat.core.resp import NULL_BULK, OK, ReplyScanner, array, error, integer

if TYPE_CHECKING:
    from distpat.net.redis_client import RedisClient

__all__ = ["SINGLE_KEY", "Merge", "merge_replies"]


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


class Merge:
    """A split command waiting for its fragments' replies."""

    __slots__ = ("client", "count", "fragments", "name", "remaining", "slot")

    def __init__(self, client: RedisClient, name: bytes, count: int, slot: list[Any]) -> None:
        self.client = client
        self.name = name
        self.count = count
        self.slot = slot
        self.fragments: list[tuple[list[int], bytes]] = []
        self.remaining = 0

    def complete(self, positions: list[int], reply: bytes) -> None:
        self.fragments.append((positions, reply))
        self.remaining -= 1
        if self.remaining == 0:
            self.client.complete(self.slot, merge_replies(self.name, self.count, self.fragments))
