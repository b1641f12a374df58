"""The limiter's shared mode: every limit's bucket in one Redis server, judged by one script call.

Pure: this module builds the Redis command (a tuple of bytes) and reads its reply; the engine
carries the :class:`~distpat.core.stage.Call` out (:mod:`distpat.net.resp_client`, or redis-py in
:mod:`distpat.aiohttp`). Several workers and several replicas pointed at one Redis server then
share one limit, as nginx's workers share one ``limit_req`` zone.

**One round trip per request.** The script (:data:`SCRIPT`) does for all the limits of a stage at
once what :meth:`Limit.decide <distpat.core.limiter.Limit.decide>` does for one, with the same
arithmetic in the same order (IEEE doubles in Lua as in Python): it reads each key's
``"excess last"``, drains it to the server's clock (``TIME``, one clock for every replica, so
machines whose clocks disagree still share one bucket), adds the cost, and, **only when every
enforced limit admits**, stores each new state with a TTL. Refused, it stores nothing: a request
refused by one limit costs the others nothing, as in one process. It answers the verdict, the
server's ``now``, and each key's state *before* the request; the stage then runs the very same
:meth:`Limit.decide` on those states and that ``now`` for the decision's kind, delay and header
values, so the shared mode and the local one can never disagree on what a state means.

Scripts are atomic in Redis, so concurrent decisions for one key from many processes are
serialised by the server; the calls of one event-loop turn go out in one write (pipelined,
:mod:`distpat.net.resp_client`). The first call is ``EVALSHA``; a server that does not know the
script (``NOSCRIPT``: restarted, or flushed) is sent ``EVAL`` with its text once, which loads it.

**TTL.** A state is stored with ``PX = ceil((excess + 1) / rate)`` seconds (in milliseconds, plus one
second): the time its bucket takes to drain to empty. A key that vanished decides exactly as one
never seen, so Redis forgets idle keys by itself and its memory is bounded by the keys active
within a window.

**Keys.** ``distpat:rl:<limit name>:<key>``; a limit's name is printable ASCII without spaces'
surprises (:func:`~distpat.core.limiter.check_limit_name`), the key is the request's as the key
source made it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from distpat.core.limiter import EPSILON, Limit, State
from distpat.errors import RespProtocolError

__all__ = ["KEY_PREFIX", "SCRIPT", "SCRIPT_SHA", "SharedVerdict", "read_reply", "script_call"]

KEY_PREFIX = b"distpat:rl:"

SCRIPT = b"""\
-- distpat's shared rate limiter (src/distpat/core/limiter_shared.py): nginx's limit_req bucket per key.
-- KEYS[i]: limit i's key. ARGV[1]: the request's cost; ARGV[2]: epsilon;
-- then for limit i: ARGV[3i], ARGV[3i+1], ARGV[3i+2] = rate (requests/s), burst, enforced (1) or dry run (0).
-- Returns {refused (the 1-based index of the first enforced limit that refuses, 0: all admit),
--          now (the server's clock, seconds), state_1 .. state_n ("excess last" before, "" for none)}.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local eps = tonumber(ARGV[2])
local n = #KEYS
local out = {0, string.format('%.17g', now)}
local new = {}
local refused = 0
for i = 1, n do
  local rate = tonumber(ARGV[3 * i])
  local burst = tonumber(ARGV[3 * i + 1])
  local enforced = ARGV[3 * i + 2] == '1'
  local raw = redis.call('GET', KEYS[i])
  local level = 0.0
  local last = nil
  if raw then
    out[i + 2] = raw
    local sep = string.find(raw, ' ', 1, true)
    local excess = tonumber(string.sub(raw, 1, sep - 1))
    last = tonumber(string.sub(raw, sep + 1))
    local elapsed = now - last
    if elapsed > 0 then level = excess + 1.0 - rate * elapsed else level = excess + 1.0 end
    if level <= eps then level = 0.0 end
  else
    out[i + 2] = ''
  end
  local excess = level + cost - 1.0
  if excess > burst + eps then
    if enforced and refused == 0 then refused = i end
  else
    if excess < 0.0 then excess = 0.0 end
    if last == nil or now > last then last = now end
    new[i] = {excess, last, rate}
  end
end
if refused == 0 then
  for i = 1, n do
    local s = new[i]
    if s then
      local ttl = math.ceil((s[1] + 1.0) / s[3] * 1000) + 1000
      redis.call('SET', KEYS[i], string.format('%.17g %.17g', s[1], s[2]), 'PX', ttl)
    end
  end
end
out[1] = refused
return out
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT).hexdigest().encode("ascii")  # Redis names scripts by SHA-1


def _number(value: float) -> bytes:
    return repr(float(value)).encode("ascii")


def script_call(
    limits: Sequence[Limit],
    enforced: Sequence[bool],
    keys: Sequence[bytes],
    cost: float,
    *,
    load: bool = False,
) -> tuple[bytes, ...]:
    """The command judging one request of ``cost`` by ``limits`` (each with its key and whether
    it is enforced or a dry run): ``EVALSHA``, or ``EVAL`` with the script's text when ``load``."""
    args: list[bytes] = [b"EVAL", SCRIPT] if load else [b"EVALSHA", SCRIPT_SHA]
    args.append(b"%d" % len(limits))
    args.extend(
        KEY_PREFIX + limit.name.encode("ascii") + b":" + key for limit, key in zip(limits, keys, strict=True)
    )
    args.append(_number(cost))
    args.append(_number(EPSILON))
    for limit, on in zip(limits, enforced, strict=True):
        args.extend((_number(limit.rate), b"%d" % limit.burst, b"1" if on else b"0"))
    return tuple(args)


@dataclass(frozen=True, slots=True)
class SharedVerdict:
    """What the script answered: the refusing limit's index (or None), the server's clock, and
    each limit's state before the request (None for a key Redis does not hold)."""

    refused: int | None
    now: float
    states: tuple[State | None, ...]


def _state(raw: object) -> State | None:
    if raw == b"" or raw is None:
        return None
    if not isinstance(raw, bytes):
        raise RespProtocolError(f"the limiter's script answered a state that is not a string: {raw!r}")
    excess, sep, last = raw.partition(b" ")
    try:
        if not sep:
            raise ValueError
        state = float(excess), float(last)
        if not (math.isfinite(state[0]) and math.isfinite(state[1]) and state[0] >= 0):
            raise ValueError
        return state
    except ValueError:
        raise RespProtocolError(f"the limiter's key holds {raw[:60]!r}, not 'excess last'") from None


def read_reply(reply: object, count: int) -> SharedVerdict:
    """Read the script's reply for ``count`` limits; :class:`~distpat.errors.RespProtocolError`
    when it is not what the script answers (another program's key under the same name, say)."""
    if not isinstance(reply, list) or len(reply) != count + 2:
        raise RespProtocolError(f"the limiter's script answered {reply!r:.80}, not {count + 2} values")
    refused, now = reply[0], reply[1]
    if not isinstance(refused, int) or not 0 <= refused <= count or not isinstance(now, bytes):
        raise RespProtocolError(f"the limiter's script answered {reply[:2]!r:.80} for its verdict")
    try:
        clock = float(now)
    except ValueError:
        raise RespProtocolError(f"the limiter's script answered the time {now[:40]!r}") from None
    return SharedVerdict(refused - 1 if refused else None, clock, tuple(_state(raw) for raw in reply[2:]))
