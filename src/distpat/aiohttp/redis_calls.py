"""Carrying out a :class:`~distpat.core.stage.Call`: one Redis round trip through ``redis.asyncio``.

The reply comes back as the server sent it (RESP2: bytes, ints, None, lists of them; the
client is made without redis-py's per-command conversions, see
:func:`~distpat.aiohttp.state.redis_client`). An error reply becomes
:attr:`CallResult.error <distpat.core.stage.CallResult.error>` with its code in front as the
server wrote it (``ERR ...``, ``NOSCRIPT ...``, ``WRONGTYPE ...``); no reply at all becomes
``"unavailable: ..."`` (no client configured, the connection failed, no reply within the
Call's ``timeout``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from distpat.core.stage import Call, CallResult

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["call_redis", "error_text"]

# redis-py takes these codes off the front of an error reply and says them with a class instead
# (older releases keep no status_code); put back for a stage, which sees what the server said.
_CODES = {
    "NoScriptError": "NOSCRIPT",
    "ExecAbortError": "EXECABORT",
    "ReadOnlyError": "READONLY",
    "BusyLoadingError": "LOADING",
    "OutOfMemoryError": "OOM",
    "NoPermissionError": "NOPERM",
    "AuthenticationError": "NOAUTH",
}


def error_text(exc: Exception) -> str:
    """A redis-py ``ResponseError`` as the server's error reply (without the leading ``-``)."""
    message = str(exc)
    code = getattr(exc, "status_code", None) or _CODES.get(type(exc).__name__)
    if code is None:
        first = message.split(" ", 1)[0]
        code = None if first.isupper() and first.isalpha() else "ERR"
    if code is not None and not message.startswith(code):
        return f"{code} {message}"
    return message


async def call_redis(client: Redis | None, call: Call) -> CallResult:
    """Send ``call.command`` and wait at most ``call.timeout`` seconds for the reply."""
    if client is None:
        return CallResult(error="unavailable: no Redis client (give redis_url)")
    from redis.exceptions import RedisError, ResponseError

    try:
        value = await asyncio.wait_for(
            client.execute_command(*call.command),  # type: ignore[no-untyped-call]
            call.timeout,
        )
    except ResponseError as exc:
        return CallResult(error=error_text(exc))
    except TimeoutError:
        return CallResult(error=f"unavailable: no reply within {call.timeout:g} s")
    except (RedisError, OSError) as exc:
        return CallResult(error=f"unavailable: {exc or type(exc).__name__}")
    return CallResult(value=value)
