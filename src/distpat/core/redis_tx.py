"""A client's transaction as Redis keeps it (``multi.c``), for a sharding proxy: no I/O, no clock.

After MULTI the proxy answers each command itself: ``+QUEUED`` once the command is known, served, of the
right arity and with keys to route by; anything else is answered with its error and *flags* the
transaction, so that EXEC answers ``-EXECABORT`` and runs none of it, as Redis does for a command it
rejects at queue time. WATCHed keys are remembered with the block: at EXEC, every key of both must live on
one server, which then gets ``MULTI``, the commands and ``EXEC`` as one block (the driver's part, in
:mod:`distpat.net.redis_tx`); keys on several servers abort the whole block, nothing applied.

:class:`Transaction` holds the state and gives the replies in Redis's words; :func:`queue_keys` checks one
command against the command table. The driver decides nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distpat.core.redis_commands import COMMANDS, SCRIPT_REFUSAL, Kind, command_keys
from distpat.core.resp import OK, error

__all__ = [
    "COMMAND_OVERHEAD",
    "EXECABORT",
    "KEY_OVERHEAD",
    "MAX_TRANSACTION_BYTES",
    "Block",
    "Transaction",
    "queue_keys",
    "queued_cost",
]

QUEUED = b"+QUEUED\r\n"
EXECABORT = error("EXECABORT Transaction discarded because of previous errors.")
EMPTY = b"*0\r\n"

MAX_TRANSACTION_BYTES = 8 * 1024 * 1024
"""What one client's queued block may cost by default (``--max-transaction-bytes``)."""
COMMAND_OVERHEAD = 64
"""What a queued command keeps besides its wire bytes: the ``bytes`` object's header (33 bytes, rounded up by
the allocator) and its slot in the queue, over-allocation included. Measured with :mod:`tracemalloc`
(200,000 queued ``GET k<n>``: 114 bytes each kept for 25 on the wire and a 6-byte key)."""
KEY_OVERHEAD = 48
"""What each remembered key keeps besides its bytes: a ``bytes`` object's header and its slot in the list."""


def queued_cost(raw: bytes, keys: list[bytes]) -> int:
    """The memory a queued command holds until EXEC: its wire bytes, its keys, and their objects' overhead."""
    return len(raw) + COMMAND_OVERHEAD + sum(map(len, keys)) + KEY_OVERHEAD * len(keys)


def _unknown(args: list[bytes]) -> bytes:
    return error(
        f"ERR unknown or unsupported command '{args[0].decode('utf-8', 'replace')}': "
        "distpat does not know how to shard it"
    )


def queue_keys(args: list[bytes], *, allow_scripts: bool = False) -> list[bytes] | bytes:
    """The keys a command brings to a transaction, or the error Redis-through-a-proxy answers instead.

    Keyless commands (PING, SELECT, ...) cannot choose the block's server and are refused, as are the
    commands refused outside a transaction, and scripts unless ``allow_scripts``.
    """
    spec = COMMANDS.get(args[0].lower())
    if spec is None:
        return _unknown(args)
    kind = spec.kind
    if kind is Kind.KEYS or kind is Kind.FANOUT or (kind is Kind.SCRIPT and allow_scripts):
        return command_keys(args, spec)
    name = args[0].decode("utf-8", "replace")
    if kind is Kind.SCRIPT:
        return error(f"ERR '{name}' is not supported by a sharding proxy: {SCRIPT_REFUSAL}")
    if kind is Kind.REFUSED:
        return error(f"ERR '{name}' is not supported by a sharding proxy: {spec.reason}")
    return error(
        f"ERR '{name}' inside MULTI is not supported by a sharding proxy: "
        "a command without a key cannot choose the transaction's server"
    )


@dataclass(frozen=True, slots=True)
class Block:
    """What EXEC sends: the queued commands (as multibulk) and every key they and WATCH named."""

    commands: tuple[bytes, ...]
    keys: tuple[bytes, ...]

    def wire(self) -> bytes:
        """MULTI, the commands, EXEC: one write, one transaction on the server."""
        return b"*1\r\n$5\r\nMULTI\r\n" + b"".join(self.commands) + b"*1\r\n$4\r\nEXEC\r\n"

    @property
    def replies(self) -> int:
        """Replies the server sends for :meth:`wire`: +OK, one per command, EXEC's."""
        return len(self.commands) + 2


@dataclass(slots=True)
class Transaction:
    """MULTI's queue and WATCH's keys for one client.

    ``max_bytes`` bounds the memory a client's queue holds (a transaction is held whole until EXEC): every
    command is charged :func:`queued_cost`, its bytes and keys with their objects' overhead, so that the
    memory kept stays near ``max_bytes`` however small the commands. A command past it is refused at queue
    time and flags the block (EXEC answers ``-EXECABORT``), as Redis does for a command it rejects; what was
    queued is let go at once.
    """

    max_bytes: int = MAX_TRANSACTION_BYTES
    in_multi: bool = False
    flagged: bool = False
    commands: list[bytes] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    watched: list[bytes] = field(default_factory=list)
    size: int = 0

    @property
    def idle(self) -> bool:
        """Neither in MULTI nor watching: the client is back on the short path."""
        return not self.in_multi and not self.watched

    def multi(self) -> bytes:
        if self.in_multi:
            return error("ERR MULTI calls can not be nested")
        self.in_multi = True
        return OK

    def queue(self, raw: bytes, keys: list[bytes] | bytes) -> bytes:
        """Queue a command given its keys (from :func:`queue_keys`), or flag the block with its error."""
        if isinstance(keys, bytes):
            return self.flag(keys)
        if self.flagged:  # EXEC will abort: nothing more to keep
            return QUEUED
        self.size += queued_cost(raw, keys)
        if self.size > self.max_bytes:
            self.commands = []
            self.keys = []
            return self.flag(
                error(
                    f"ERR transaction larger than {self.max_bytes} bytes (max_transaction_bytes, "
                    "counting each queued command's overhead): EXEC will abort it"
                )
            )
        self.commands.append(raw)
        self.keys.extend(keys)
        return QUEUED

    def flag(self, reply: bytes) -> bytes:
        """A command refused at queue time: answered with ``reply``, and EXEC will abort."""
        self.flagged = True
        return reply

    def watch(self, keys: list[bytes]) -> bytes | None:
        """None if WATCH may go to the server; an error reply if not (inside MULTI)."""
        if self.in_multi:
            return error("ERR WATCH inside MULTI is not allowed")
        self.watched.extend(keys)
        return None

    def unwatch(self) -> None:
        self.watched.clear()

    def discard(self) -> bytes:
        if not self.in_multi:
            return error("ERR DISCARD without MULTI")
        self._reset()
        return OK

    def exec(self) -> Block | bytes:
        """The block to send, or the reply EXEC gets at once (its errors, or an empty block's ``*0``).

        Either way the transaction is over: queue, flag and WATCH are cleared, as EXEC clears them.
        """
        if not self.in_multi:
            return error("ERR EXEC without MULTI")
        flagged, watched = self.flagged, list(self.watched)
        block = Block(tuple(self.commands), tuple(self.keys) + tuple(watched))
        self._reset()
        if flagged:
            return EXECABORT
        if not block.commands and not watched:
            return EMPTY
        return block

    def _reset(self) -> None:
        self.in_multi = self.flagged = False
        self.commands = []
        self.keys = []
        self.watched = []
        self.size = 0
