"""Which Redis commands a sharding proxy can serve, and how: no I/O, no clock.

Every command name maps to a :class:`Spec`: where its keys are (so it goes
to the server that owns them), or that it is split across servers and the
replies merged (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH), answered by the proxy
itself (PING, ECHO, HELLO, ...), a transaction command (MULTI, EXEC, WATCH, ...),
a script (refused unless allowed), or refused with the reason. The table covers
what twemproxy forwards, plus what modern clients send on connect.

Every key a command touches counts, destinations included (``SORT ... STORE
dest``, ``ZUNIONSTORE dest numkeys ...``, ``BITOP op dest ...``): a command
whose keys are on several servers is refused rather than writing a key where
the ring does not put it. Options that name keys are read by a
:data:`KeyFinder`; ``SORT``'s ``BY``/``GET`` patterns, which read keys no
argument names, are refused.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from distpat.core.resp import error

__all__ = [
    "COMMANDS",
    "SCRIPT_REFUSAL",
    "KeyFinder",
    "Kind",
    "Spec",
    "command_keys",
    "lookup",
    "split_keys",
    "wrong_arity",
]


class Kind(enum.Enum):
    KEYS = "keys"  # forwarded whole to the server owning its keys (all of them on one server)
    FANOUT = "fanout"  # split per server, replies merged
    LOCAL = "local"  # answered by the proxy
    REFUSED = "refused"
    SCRIPT = "script"  # KEYS when ShardSettings.allow_scripts, else refused
    TRANSACTION = "transaction"  # MULTI, EXEC, DISCARD, WATCH, UNWATCH: net/redis_tx.py


KeyFinder = Callable[[list[bytes]], "list[bytes] | bytes"]
"""The keys of a command whose options name keys too (SORT ... STORE dest), or an error reply."""


@dataclass(frozen=True, slots=True)
class Spec:
    kind: Kind
    first: int = 1  # index of the first key argument; with numkeys, of a destination key before it (or 0)
    last: int = 1  # index of the last key (negative: from the end); 0 with numkeys
    step: int = 1
    numkeys: int = 0  # index of a numkeys argument (EVAL, ZUNIONSTORE ...); that many keys follow it
    arity: int = 2  # at least this many arguments, the name included
    reason: str = ""
    find: KeyFinder | None = None  # keys found by reading the options

    @property
    def simple(self) -> bool:
        """One key, the first argument: the short path."""
        return self.first == 1 and self.last == 1 and not self.numkeys and self.find is None


def _keys(names: str, *, first: int = 1, last: int = 1, step: int = 1, arity: int = 2) -> dict[bytes, Spec]:
    spec = Spec(Kind.KEYS, first, last, step, arity=arity)
    return {n.encode(): spec for n in names.split()}


def _refused(names: str, reason: str) -> dict[bytes, Spec]:
    spec = Spec(Kind.REFUSED, reason=reason)
    return {n.encode(): spec for n in names.split()}


def _name(args: list[bytes]) -> str:
    return args[0].decode("utf-8", "replace").lower()


def _sort_keys(args: list[bytes]) -> list[bytes] | bytes:
    """SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC] [ALPHA] [STORE dest].

    A BY or GET pattern with ``*`` reads other keys (one per element), which may live on other servers:
    refused, as Redis Cluster refuses them across slots. STORE's destination is a key (not for SORT_RO).
    """
    keys = [args[1]]
    store = args[0].lower() == b"sort"
    i, n = 2, len(args)
    while i < n:
        option = args[i].lower()
        if option in (b"by", b"get") and i + 1 < n:
            if b"*" in args[i + 1] and args[i + 1] != b"#":
                return error(
                    f"ERR {_name(args).upper()} {option.decode().upper()} patterns read other keys, "
                    "which a sharding proxy cannot route: sort by the values themselves"
                )
            i += 2
        elif option == b"limit" and i + 2 < n:
            i += 3
        elif option == b"store" and store and i + 1 < n:
            keys.append(args[i + 1])
            i += 2
        else:
            i += 1  # ASC, DESC, ALPHA; a syntax error is the server's to answer
    return keys


def _georadius_keys(args: list[bytes]) -> list[bytes] | bytes:
    """GEORADIUS key lon lat radius unit ... / GEORADIUSBYMEMBER key member radius unit ...: the key, and
    the destinations of STORE and STOREDIST."""
    keys = [args[1]]
    start = 6 if args[0].lower() == b"georadius" else 5
    for i in range(start, len(args) - 1):
        if args[i].lower() in (b"store", b"storedist"):
            keys.append(args[i + 1])
    return keys


def _copy_keys(args: list[bytes]) -> list[bytes] | bytes:
    """COPY source destination [DB n] [REPLACE]: DB would write outside the pool's database."""
    if any(a.lower() == b"db" for a in args[3:]):
        return error("ERR COPY ... DB is not allowed: this pool serves one database")
    return args[1:3]


_SINGLE = """
get set setnx setex psetex getset getdel getex append strlen incr decr incrby decrby incrbyfloat
getrange setrange substr getbit setbit bitcount bitpos bitfield bitfield_ro lcs_ro
expire pexpire expireat pexpireat expiretime pexpiretime ttl pttl persist type dump restore
hget hset hsetnx hmset hmget hdel hexists hgetall hincrby hincrbyfloat hkeys hvals hlen hstrlen
hscan hrandfield
lpush rpush lpushx rpushx lpop rpop llen lrange lindex lset lrem ltrim linsert lpos
sadd srem smembers sismember smismember scard spop srandmember sscan
zadd zrem zscore zincrby zcard zcount zrange zrevrange zrangebyscore zrevrangebyscore zrank zrevrank
zremrangebyrank zremrangebyscore zlexcount zrangebylex zrevrangebylex zremrangebylex zscan zpopmin
zpopmax zmscore zrandmember
pfadd
geoadd geodist geohash geopos geosearch georadius_ro georadiusbymember_ro
xadd xlen xrange xrevrange xdel xtrim xack xpending xclaim xautoclaim xsetid
"""

COMMANDS: dict[bytes, Spec] = {
    **_keys(_SINGLE),
    # several keys that must share a server (use hash tags: {user:1}:a, {user:1}:b)
    **_keys("sunion sinter sdiff sunionstore sinterstore sdiffstore pfcount pfmerge", last=-1),
    **_keys("smove rpoplpush lmove rename renamenx lcs", last=2, arity=3),
    **_keys("zrangestore geosearchstore", last=2, arity=3),
    **_keys("xinfo xgroup", first=2, last=2, arity=3),  # XINFO STREAM key, XGROUP CREATE key ...
    **_keys("bitop", first=2, last=-1, arity=4),  # BITOP op dest key ...
    # a destination, then numkeys keys: ZUNIONSTORE dest numkeys key ...
    **{
        n: Spec(Kind.KEYS, first=1, numkeys=2, arity=4)
        for n in (b"zunionstore", b"zinterstore", b"zdiffstore")
    },
    # numkeys keys: ZUNION numkeys key ..., LMPOP numkeys key ... LEFT|RIGHT
    **{
        n: Spec(Kind.KEYS, first=0, numkeys=1, arity=3)
        for n in (b"zunion", b"zinter", b"zdiff", b"zintercard", b"sintercard", b"lmpop", b"zmpop")
    },
    # keys named by options
    b"sort": Spec(Kind.KEYS, find=_sort_keys),
    b"sort_ro": Spec(Kind.KEYS, find=_sort_keys),
    b"georadius": Spec(Kind.KEYS, arity=6, find=_georadius_keys),
    b"georadiusbymember": Spec(Kind.KEYS, arity=5, find=_georadius_keys),
    b"copy": Spec(Kind.KEYS, arity=3, find=_copy_keys),
    # scripts: refused unless ShardSettings.allow_scripts (see SCRIPT_REFUSAL)
    **{
        n: Spec(Kind.SCRIPT, first=0, numkeys=2, arity=3)
        for n in (b"eval", b"evalsha", b"eval_ro", b"evalsha_ro", b"fcall", b"fcall_ro")
    },
    # transactions: answered by the proxy, forwarded as one block (net/redis_tx.py)
    **{n: Spec(Kind.TRANSACTION, arity=1) for n in (b"multi", b"exec", b"discard", b"unwatch")},
    b"watch": Spec(Kind.TRANSACTION, first=1, last=-1, arity=2),
    # split across servers, replies merged
    b"mget": Spec(Kind.FANOUT, 1, -1, 1),
    b"del": Spec(Kind.FANOUT, 1, -1, 1),
    b"unlink": Spec(Kind.FANOUT, 1, -1, 1),
    b"exists": Spec(Kind.FANOUT, 1, -1, 1),
    b"touch": Spec(Kind.FANOUT, 1, -1, 1),
    b"mset": Spec(Kind.FANOUT, 1, -1, 2, arity=3),
    # answered by the proxy
    **{
        n: Spec(Kind.LOCAL, arity=1)
        for n in (b"ping", b"echo", b"quit", b"select", b"command", b"hello", b"client", b"auth")
    },
    **_refused(
        "keys scan randomkey dbsize flushall flushdb swapdb move migrate",
        "it acts on every key of a server, and keys are spread over several servers",
    ),
    **_refused(
        "blpop brpop brpoplpush blmove blmpop bzpopmin bzpopmax bzmpop wait waitaof xread xreadgroup",
        "blocking commands would hold a server connection every client shares",
    ),
    **_refused(
        "subscribe psubscribe ssubscribe unsubscribe punsubscribe sunsubscribe publish spublish pubsub",
        "pub/sub is not sharded by key",
    ),
    **_refused(
        "info config save bgsave bgrewriteaof lastsave shutdown monitor slaveof replicaof sync psync "
        "cluster debug slowlog latency memory acl failover role module time lolwut "
        "object readonly readwrite reset",
        "it is a server administration command: send it to each server directly",
    ),
    **_refused("msetnx", "it would need to be atomic across servers"),
    **_refused(
        "script function",
        "it has no key to route by and acts on a whole server (load scripts on each server directly; "
        "EVAL, EVALSHA and FCALL are served with --allow-scripts)",
    ),
}

SCRIPT_REFUSAL = (
    "a script can run any command on the server its keys route to (FLUSHALL, SWAPDB, KEYS ...), past "
    "the proxy's refusals; start redis-shard with --allow-scripts to route scripts by their declared keys"
)
"""Why EVAL, EVALSHA, FCALL and their _RO forms are refused unless ShardSettings.allow_scripts."""


def lookup(name: bytes) -> Spec | None:
    """The spec of a command name (any case); None for a command distpat does not know."""
    return COMMANDS.get(name.lower())


def wrong_arity(name: bytes) -> bytes:
    """Redis's answer to a command with too few (or an odd number of) arguments."""
    return error(f"ERR wrong number of arguments for '{name.decode('utf-8', 'replace').lower()}' command")


def command_keys(args: list[bytes], spec: Spec) -> list[bytes] | bytes:
    """The key arguments of a KEYS or FANOUT command, or an error reply if the arguments are wrong."""
    n = len(args)
    if n < spec.arity:
        return wrong_arity(args[0])
    if spec.find is not None:
        return spec.find(args)
    if spec.numkeys:
        raw = args[spec.numkeys]
        if not raw.isdigit() or len(raw) > 9:
            return error("ERR value is not an integer or out of range")
        count = int(raw)
        if count == 0:
            if spec.kind is Kind.SCRIPT:
                return error("ERR a sharding proxy needs at least one key to route a script (numkeys is 0)")
            return error(f"ERR at least 1 input key is needed for '{_name(args)}' command")
        start = spec.numkeys + 1
        if start + count > n:
            return error("ERR Number of keys can't be greater than number of args")
        keys = args[start : start + count]
        return [args[spec.first], *keys] if spec.first else keys
    last = spec.last if spec.last > 0 else n + spec.last
    if last >= n:
        return wrong_arity(args[0])
    if spec.step == 1:
        return args[spec.first : last + 1]
    if (n - spec.first) % spec.step:
        return wrong_arity(args[0])
    return args[spec.first : last + 1 : spec.step]


def split_keys(args: list[bytes], spec: Spec, owners: list[str]) -> dict[str, tuple[list[int], list[bytes]]]:
    """A FANOUT command's fragments: per server, the key positions and the fragment's arguments.

    ``owners[i]`` is the server of the i-th key. Each fragment is the same
    command over that server's keys (and, for MSET, their values), in the
    order the client gave them.
    """
    name = args[0]
    out: dict[str, tuple[list[int], list[bytes]]] = {}
    step = spec.step
    for i, owner in enumerate(owners):
        frag = out.get(owner)
        if frag is None:
            frag = out[owner] = ([], [name])
        frag[0].append(i)
        at = spec.first + i * step
        frag[1].extend(args[at : at + step])
    return out
