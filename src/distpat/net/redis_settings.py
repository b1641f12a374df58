"""The Redis ambassador's settings: limits and policies that are not part of twemproxy's YAML."""

from __future__ import annotations

from dataclasses import dataclass

from distpat.core.redis_local import VERSION
from distpat.core.redis_tx import MAX_TRANSACTION_BYTES

__all__ = ["VERSION", "ShardSettings"]


@dataclass(frozen=True, slots=True)
class ShardSettings:
    max_request_bytes: int = 64 * 1024 * 1024
    """One command, and what a client may have buffered for an incomplete one."""
    max_transaction_bytes: int = MAX_TRANSACTION_BYTES
    """What one client's MULTI block may hold until EXEC, each command's overhead counted
    (:func:`distpat.core.redis_tx.queued_cost`); past it the block is refused and EXEC aborts."""
    max_reply_bytes: int = 512 * 1024 * 1024
    """One reply from a server."""
    max_client_output_bytes: int = 256 * 1024 * 1024
    """Replies a client has not read yet; past it the client is disconnected (Redis's output limit)."""
    keep_ring: bool = False
    """Never take an ejected server out of the ring: its keys get errors rather than moving."""
    key_cache: int = 262_144
    """Distinct keys whose server is remembered (twemproxy's hashes cost ~1 µs a key in Python);
    emptied when full and whenever the ring changes. 0: hash every key."""
    shutdown_timeout: float = 30.0
    allow_scripts: bool = False
    """Serve EVAL, EVALSHA, FCALL (and _RO), routed by their declared keys (all on one server). The risk:
    a script can run any command on that server, FLUSHALL, SWAPDB and KEYS included, and touch keys it did
    not declare; only for clients whose scripts are trusted."""
