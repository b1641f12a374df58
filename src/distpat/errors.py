"""The one error hierarchy of distpat.

Every exception distpat raises on purpose derives from :class:`DistpatError`.
Where an error has an obvious builtin counterpart the subclass inherits that
too, so callers can catch either (``except ValueError`` keeps working for bad
arguments, ``except ConnectionError`` for transport failures).
"""

from __future__ import annotations

__all__ = [
    "AdminServerStateError",
    "CacheStoreError",
    "ConfigError",
    "DistpatError",
    "EmptyRingError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "RespProtocolError",
    "RingError",
    "UnknownHashError",
    "UpstreamError",
    "UpstreamTimeoutError",
]


class DistpatError(Exception):
    """Root of every error distpat raises on purpose."""


class RingError(DistpatError, ValueError):
    """A consistent-hashing ring was given something it cannot place keys with.

    Raised for duplicate node names, non-positive or non-finite weights,
    unknown nodes in a membership change, and similar caller mistakes.
    """


class EmptyRingError(RingError):
    """A ring was asked to exist, or to answer a lookup, with no nodes."""


class UnknownHashError(RingError):
    """A hash or distribution name is not one distpat implements."""


class ConfigError(DistpatError, ValueError):
    """A configuration file, flag or environment variable is invalid.

    The message names where the problem is (file, pool, key) and what was
    expected, so an operator can fix it without reading the source.
    """


class ProtocolError(DistpatError):
    """A protocol was broken; ``status`` is the HTTP status that reports it (400 when unsure).

    Like h11's, the two subclasses say whose fault it was.
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RemoteProtocolError(ProtocolError, ValueError):
    """The peer sent something the protocol forbids (a smuggling attempt, a bad chunk size, ...)."""


class RespProtocolError(DistpatError, ValueError):
    """Bytes that are not the Redis protocol; a client gets ``-ERR Protocol error: <message>``."""


class LocalProtocolError(ProtocolError, ValueError):
    """distpat was asked to send something the protocol forbids (a bug in a hook or in distpat)."""


class UpstreamError(DistpatError, ConnectionError):
    """An upstream could not be reached or broke the exchange (reported to the client as 502)."""


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """An upstream did not answer within its timeout (reported to the client as 504)."""


class AdminServerStateError(DistpatError, RuntimeError):
    """An admin server was used in the wrong state (its port read before start, started twice)."""


class CacheStoreError(DistpatError, ValueError):
    """A shared cache store held or answered something that is not what distpat writes there: a
    stored entry truncated, of another format version, with lengths past its end or trailing
    bytes, or a Redis reply of the wrong shape (:mod:`distpat.core.cache_codec`,
    :mod:`distpat.core.cache_redis`). The entry is then treated as absent, never trusted."""
