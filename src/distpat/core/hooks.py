"""The extension seam of the HTTP engine: what a component sees and may decide.

Later components (rate limiter, cache, experiment router, sharding router)
are objects implementing :class:`ProxyHook`. The proxy engine calls them for
every request before it is forwarded and for every response before it is
sent; the aiohttp middlewares call the very same objects. A hook is pure
decision logic: it is handed the request, the response head and the current
time (``now``, seconds on a monotonic clock), and it answers with data, never
with I/O. It may

* answer the request itself (return a :class:`LocalResponse` from
  :meth:`ProxyHook.on_request`): the upstream is never contacted;
* choose the upstream (set :attr:`RequestView.upstream` to one of the
  configured upstream names, ``host:port``);
* change the request headers (edit :attr:`RequestView.headers`) or the
  response headers (edit the list passed to :meth:`ProxyHook.on_response`).

Hooks run in order; the first local response wins and later hooks'
``on_request`` are skipped, but every hook's ``on_response`` sees the
response, local or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from distpat.errors import LocalProtocolError

__all__ = ["LocalResponse", "ProxyHook", "RequestView"]


@dataclass(slots=True)
class RequestView:
    """A request as hooks see it; ``headers`` and ``upstream`` may be changed."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    """Request headers as they will be forwarded (hop-by-hop already removed, X-Forwarded-* added)."""
    client_addr: str
    scheme: str
    upstream: str | None = None
    """The upstream to use, by name (``host:port``); None lets the balancer choose."""
    notes: dict[str, object] = field(default_factory=dict)
    """Scratch space a hook can use to pass state from ``on_request`` to ``on_response``."""

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lower = name.lower()
        for k, v in self.headers:
            if k.lower() == lower:
                return v
        return None


@dataclass(frozen=True, slots=True)
class LocalResponse:
    """A response a hook gives instead of forwarding the request."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    content_type: bytes = b"text/plain; charset=utf-8"

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise LocalProtocolError(f"a local response needs a final status (200-599), not {self.status}")
        for name, _ in self.headers:
            if name.lower() in (b"content-length", b"transfer-encoding", b"connection"):
                raise LocalProtocolError(f"a local response sets {name.decode('latin-1')} itself")


class ProxyHook(Protocol):
    """A component that acts on requests before they are forwarded and on responses after."""

    def on_request(self, request: RequestView, now: float) -> LocalResponse | None:
        """Inspect or change ``request``; return a response to answer it locally, or None to go on."""
        ...

    def on_response(
        self, request: RequestView, status: int, headers: list[tuple[bytes, bytes]], now: float
    ) -> None:
        """Inspect the response head, or change its ``headers`` in place, before it is sent."""
        ...
