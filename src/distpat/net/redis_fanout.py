"""Commands split over several servers (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH): waiting for the
fragments (the merging itself is pure: core/redis_merge.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distpat.core.redis_merge import SINGLE_KEY, merge_replies

if TYPE_CHECKING:
    from distpat.net.redis_client import RedisClient

__all__ = ["SINGLE_KEY", "Merge", "merge_replies"]


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
