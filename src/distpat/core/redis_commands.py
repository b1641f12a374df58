"""Which Redis commands a sharding proxy can serve, and how: no I/O, no clock.

Every command name maps to a :class:`Spec`: where its keys are (so it goes
to the server that owns them), or that it is split across servers and the
replies merged (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH), answered by the proxy
itself (PING, ECHO, HELLO, ...), or refused with the reason. The table covers
what twemproxy forwards, plus what modern clients send on connect.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from distpat.core.resp import error

__all__ = ["COMMANDS", "Kind", "Spec", "command_keys", "lookup", "split_keys", "wrong_arity"]


class Kind(enum.Enum):
    KEYS = "keys"  # forwarded whole to the server owning its keys (all of them on one server)
    FANOUT = "fanout"  # split per server, replies merged
    LOCAL = "local"  # answered by the proxy
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Spec:
    kind: Kind
    first: int = 1  # index of the first key argument
    last: int = 1  # index of the last key (negative: from the end); 0 with numkeys
    step: int = 1
    numkeys: int = 0  # index of a numkeys argument (EVAL ...); keys follow it
    arity: int = 2  # at least this many arguments, the name included
    reason: str = ""


def _keys(names: str, *, first: int = 1, last: int = 1, step: int = 1, arity: int = 2) -> dict[bytes, Spec]:
    spec = Spec(Kind.KEYS, first, last, step, arity=arity)
    return {n.encode(): spec for n in names.split()}


def _refused(names: str, reason: str) -> dict[bytes, Spec]:
    spec = Spec(Kind.REFUSED, reason=reason)
    return {n.encode(): spec for n in names.split()}


_SINGLE = """
get set setnx setex psetex getset getdel getex append strlen incr decr incrby decrby incrbyfloat
getrange setrange substr getbit setbit bitcount bitpos bitfield bitfield_ro lcs_ro
expire pexpire expireat pexpireat expiretime pexpiretime ttl pttl persist type dump restore
sort sort_ro
hget hset hsetnx hmset hmget hdel hexists hgetall hincrby hincrbyfloat hkeys hvals hlen hstrlen
hscan hrandfield
lpush rpush lpushx rpushx lpop rpop llen lrange lindex lset lrem ltrim linsert lpos
sadd srem smembers sismember smismember scard spop srandmember sscan
zadd zrem zscore zincrby zcard zcount zrange zrevrange zrangebyscore zrevrangebyscore zrank zrevrank
zremrangebyrank zremrangebyscore zlexcount zrangebylex zrevrangebylex zremrangebylex zscan zpopmin
zpopmax zmscore zrandmember
pfadd
geoadd geodist geohash geopos geosearch georadius_ro georadiusbymember_ro
xadd xlen xrange xrevrange xdel xtrim xack xpending xclaim xautoclaim
"""

COMMANDS: dict[bytes, Spec] = {
    **_keys(_SINGLE),
    # several keys that must share a server (use hash tags: {user:1}:a, {user:1}:b)
    **_keys("sunion sinter sdiff sunionstore sinterstore sdiffstore pfcount pfmerge", last=-1),
    **_keys("smove rpoplpush lmove rename renamenx copy lcs", last=2, arity=3),
    **_keys("zrangestore geosearchstore", last=2, arity=3),
    **_keys("xinfo xgroup", first=2, last=2, arity=3),  # XINFO STREAM key, XGROUP CREATE key ...
    b"eval": Spec(Kind.KEYS, numkeys=2, arity=3),
    b"evalsha": Spec(Kind.KEYS, numkeys=2, arity=3),
    b"eval_ro": Spec(Kind.KEYS, numkeys=2, arity=3),
    b"evalsha_ro": Spec(Kind.KEYS, numkeys=2, arity=3),
    b"fcall": Spec(Kind.KEYS, numkeys=2, arity=3),
    b"fcall_ro": Spec(Kind.KEYS, numkeys=2, arity=3),
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
        "multi exec discard watch unwatch",
        "transactions cannot span servers, and one server connection is shared by every client",
    ),
    **_refused(
        "subscribe psubscribe ssubscribe unsubscribe punsubscribe sunsubscribe publish spublish pubsub",
        "pub/sub is not sharded by key",
    ),
    **_refused(
        "info config save bgsave bgrewriteaof lastsave shutdown monitor slaveof replicaof sync psync "
        "cluster debug slowlog latency memory acl failover role module time lolwut script function "
        "object readonly readwrite reset",
        "it is a server administration command: send it to each server directly",
    ),
    **_refused("msetnx", "it would need to be atomic across servers"),
}


def lookup(name: bytes) -> Spec | None:
    """The spec of a command name (any case); None for a command distpat does not know."""
    return COMMANDS.get(name.lower())


def wrong_arity(name: bytes) -> bytes:
    return error(f"ERR wrong number of arguments for '{name.decode('utf-8', 'replace').lower()}' command")


def command_keys(args: list[bytes], spec: Spec) -> list[bytes] | bytes:
    """The key arguments of a KEYS or FANOUT command, or an error reply if the arguments are wrong."""
    n = len(args)
    if n < spec.arity:
        return error(
            f"ERR wrong number of arguments for '{args[0].decode('utf-8', 'replace').lower()}' command"
        )
    if spec.numkeys:
        raw = args[spec.numkeys]
        if not raw.isdigit() or len(raw) > 9:
            return error("ERR value is not an integer or out of range")
        count = int(raw)
        if count == 0:
            return error("ERR a sharding proxy needs at least one key to route a script (numkeys is 0)")
        start = spec.numkeys + 1
        if start + count > n:
            return error("ERR Number of keys can't be greater than number of args")
        return args[start : start + count]
    last = spec.last if spec.last > 0 else n + spec.last
    if last >= n:
        return error(
            f"ERR wrong number of arguments for '{args[0].decode('utf-8', 'replace').lower()}' command"
        )
    if spec.step == 1:
        return args[spec.first : last + 1]
    if (n - spec.first) % spec.step:
        return error(
            f"ERR wrong number of arguments for '{args[0].decode('utf-8', 'replace').lower()}' command"
        )
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
