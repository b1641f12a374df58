"""Commands split over several servers (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH): waiting for the
fragments (the merging itself is pure: core/redis_merge.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distpat.core.redis_commands import Spec, command_keys, split_keys
from distpat.core.redis_merge import SINGLE_KEY, merge_replies
from distpat.core.resp import encode_command

if TYPE_CHECKING:
    from distpat.net.redis_client import RedisClient
    from distpat.net.redis_pool import ShardPool
    from distpat.net.redis_server import ServerState

__all__ = ["SINGLE_KEY", "Merge", "fanout", "merge_replies"]


def fanout(
    pool: ShardPool, client: RedisClient, args: list[bytes], raw: bytes, spec: Spec, now: float
) -> None:
    """Send a command whose keys may live on several servers: whole to one server when they all
    do, else split into one fragment per server, their replies merged by a :class:`Merge`."""
    keys = command_keys(args, spec)
    if isinstance(keys, bytes):
        pool.refuse(client, "bad_arguments", keys)
        return
    owners: list[str] = []
    states: dict[str, ServerState] = {}
    for key in keys:
        state = pool.server_for(key, now)
        if isinstance(state, bytes):
            pool.refuse(client, "server_down", state)
            return
        owners.append(state.name)
        states[state.name] = state
    if len(states) == 1:
        next(iter(states.values())).connection(client.proto).send(raw, client, client.wait(), now)
        return
    merge = Merge(client, args[0].lower(), len(keys), client.wait())
    fragments = split_keys(args, spec, owners)
    merge.remaining = len(fragments)
    pool.stats["fragments"] += len(fragments)
    for owner, (positions, frag_args) in fragments.items():
        states[owner].connection(client.proto).send(encode_command(frag_args), merge, positions, now)


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
