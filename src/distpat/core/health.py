"""Passive health: when a server that keeps failing is taken out of rotation, and when it is back.

One policy for every pool distpat keeps: the HTTP engine's upstreams (nginx's ``max_fails`` and
``fail_timeout``) and the Redis ambassador's servers (twemproxy's ``server_failure_limit``,
``server_retry_timeout`` and ``auto_eject_hosts``). The state is a small object each server
holds; the time comes in as ``now`` and every transition says whether it changed the server's
standing, so the caller logs, counts and rebuilds only then.

A server is *ejected* after ``max_fails`` consecutive failures, for ``fail_timeout`` seconds.
Once that time has passed it is tried again: one success readmits it for good (its failures
forgotten), one more failure ejects it again at once (its count is still at the limit), as nginx
does. A pool that clears its ejections itself when their time is up (twemproxy's rebuild of the
continuum) calls :meth:`PassiveHealth.expire`, which forgets the failures too. An active check
that fails pins the server out (:meth:`PassiveHealth.pin_down`) until one passes; a connection
succeeding meanwhile does not overrule it.
"""

from __future__ import annotations

from dataclasses import dataclass

from distpat.errors import ConfigError

__all__ = ["EjectionPolicy", "PassiveHealth"]

_FOREVER = float("inf")


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    """When failures take a server out, and for how long."""

    max_fails: int = 2
    """Consecutive failures that eject a server."""
    fail_timeout: float = 10.0
    """Seconds an ejected server sits out before it is tried again."""
    enabled: bool = True
    """False: failures are counted, never acted on (twemproxy's ``auto_eject_hosts: false``)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_fails, bool) or not isinstance(self.max_fails, int) or self.max_fails < 1:
            raise ConfigError(f"max_fails must be a whole number of at least 1, not {self.max_fails!r}")
        if not 0 <= self.fail_timeout < _FOREVER:
            raise ConfigError(f"fail_timeout must be 0 or more seconds, not {self.fail_timeout!r}")


class PassiveHealth:
    """One server's standing: consecutive failures, and until when it is out."""

    __slots__ = ("fails", "ejected_until")

    def __init__(self) -> None:
        self.fails = 0
        self.ejected_until = 0.0
        """0: in rotation; a time: out until then; infinity: pinned out by an active check."""

    def __repr__(self) -> str:
        return f"<PassiveHealth fails={self.fails} ejected_until={self.ejected_until}>"

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    @property
    def pinned(self) -> bool:
        return self.ejected_until == _FOREVER

    def failure(self, policy: EjectionPolicy, now: float) -> bool:
        """A failure (a connect refused, a connection broken): True when it ejected the server."""
        self.fails += 1
        if policy.enabled and self.fails >= policy.max_fails and self.ejected_until <= now:
            self.ejected_until = now + policy.fail_timeout
            return True
        return False

    def success(self) -> bool:
        """A success: the failures are forgotten; True when it readmitted an ejected server."""
        self.fails = 0
        if self.ejected_until == _FOREVER or self.ejected_until == 0.0:
            return False
        self.ejected_until = 0.0
        return True

    def expire(self, now: float) -> bool:
        """An ejection whose time is up is lifted and the failures forgotten: True when one was."""
        if self.ejected_until and self.ejected_until <= now:
            self.ejected_until = 0.0
            self.fails = 0
            return True
        return False

    def pin_down(self) -> bool:
        """An active check failed: out until :meth:`pin_up`. True when that changed its standing."""
        if self.ejected_until == _FOREVER:
            return False
        self.ejected_until = _FOREVER
        return True

    def pin_up(self) -> bool:
        """An active check passed: back in, failures forgotten. True when it had been pinned out."""
        if self.ejected_until != _FOREVER:
            return False
        self.ejected_until = 0.0
        self.fails = 0
        return True
