"""The one error hierarchy of distpat.

Every exception distpat raises on purpose derives from :class:`DistpatError`.
Where an error has an obvious builtin counterpart the subclass inherits that
too, so callers can catch either (``except ValueError`` keeps working for bad
arguments, ``except ConnectionError`` for transport failures).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DistpatError",
    "EmptyRingError",
    "RingError",
    "UnknownHashError",
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
