"""Forwarding a request to a named pool through an :class:`aiohttp.ClientSession`.

The request is relayed as :mod:`distpat.net` relays it (:mod:`distpat.core.fields`):
hop-by-hop fields and the fields a Connection option names are dropped (RFC 9110 section
7.6.1), ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` and ``Via`` are added
(:func:`~distpat.core.fields.forward_request_headers`), the target and Host are sent as the
client gave them. Both bodies stream: the request's is read from the client as the upstream
takes it, the response's written to the client as it arrives, with aiohttp's flow control
(``drain``) in between; neither is held whole.

Which upstream: the stage's :attr:`Forward.order <distpat.core.stage.Forward.order>` tried in
sequence when a connection cannot be made, never another server; without an order the
pool's upstreams in turn (round robin), the next one tried on a connect failure. Only a
failure to connect moves on (no byte was sent): once a request went out, its failure is the
client's answer.

============================  ==========================================================
what happened                 the client gets
============================  ==========================================================
no upstream could be reached  ``502`` with the pool, the upstreams and why, as text
an upstream broke, or closed  ``502`` (before the response head), or the response cut
no response head in time      ``504`` (``read_timeout`` seconds), or the response cut
============================  ==========================================================

A cut response is closed with its connection (a short Content-Length body, or a chunked one
without its last chunk), so the client cannot take it for a whole one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from distpat.aiohttp.answer import answer_response, failure_answer
from distpat.aiohttp.pools import Upstream, UpstreamPool, UpstreamPools
from distpat.aiohttp.state import CLIENT_SESSION, UPSTREAM_POOLS
from distpat.aiohttp.view import multidict, target_of
from distpat.core.fields import forward_request_headers, forward_response_headers, strip_hop_by_hop
from distpat.core.stage import Fields, Forward, OutcomeKind
from distpat.errors import ConfigError, LocalProtocolError, ProtocolError, UpstreamError, UpstreamTimeoutError

__all__ = [
    "ProxySettings",
    "Relayed",
    "Upstreamed",
    "open_upstream",
    "proxy_handler",
    "relay",
    "upstream_request_headers",
]

log = logging.getLogger("distpat.aiohttp")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's client adds these when a request has none; a proxy sends what the client sent.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# The aiohttp server answered Expect: 100-continue itself (RFC 9110 section 10.1.1).
_NOT_FORWARDED = frozenset({b"expect"})


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """How requests are forwarded (the same for every pool)."""

    connect_timeout: float = 5.0
    """Seconds to get a connection to one upstream (a free slot included) before the next is tried."""
    read_timeout: float = 60.0
    """Seconds an upstream may leave a read waiting, for the response head and between body reads."""
    via: bytes = b"1.1 distpat"
    """The ``Via`` entry added to requests and responses (RFC 9110 section 7.6.3)."""
    forwarded: bool = False
    """Also add an RFC 7239 ``Forwarded`` element."""

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be more than 0 seconds, not {value!r}")


@dataclass(slots=True)
class Upstreamed:
    """A response head from an upstream; its body still to be read (or the response closed)."""

    response: aiohttp.ClientResponse
    upstream: Upstream
    pool: UpstreamPool
    fields: Fields
    """The response's fields without hop-by-hop ones, as the stages see them."""

    def close(self) -> None:
        """Done with it: the connection is reused if the body was read to its end, closed if not."""
        if self.response.content.is_eof():
            self.response.release()
        else:
            self.response.close()
        self.pool.leave(self.upstream)


def upstream_request_headers(
    request: web.BaseRequest, forward: Forward | None, settings: ProxySettings
) -> CIMultiDict[str]:
    """The fields sent upstream: the forwarding rules, then ``forward``'s drops and additions.

    Raises :class:`~distpat.errors.RemoteProtocolError` (400) for a request whose Host or
    Content-Length cannot be forwarded unambiguously."""
    fields = forward_request_headers(
        list(request.raw_headers),
        client_addr=request.remote or "",
        scheme=request.scheme,
        via=settings.via,
        forwarded=settings.forwarded,
    )
    drop = _NOT_FORWARDED if forward is None else _NOT_FORWARDED | forward.drop
    kept = tuple((n, v) for n, v in fields if n.lower() not in drop)
    return multidict(kept + (forward.add if forward is not None else ()))


async def _request_body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    while chunk := await request.content.readany():
        yield chunk


def _url(upstream: Upstream, target: bytes) -> str:
    # the target as received, bytes outside ASCII percent-encoded (they cannot go on the request line)
    return upstream.base + "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in target)


async def open_upstream(
    session: aiohttp.ClientSession,
    request: web.BaseRequest,
    pool: UpstreamPool,
    forward: Forward | None,
    settings: ProxySettings,
) -> Upstreamed:
    """Send ``request`` to ``pool`` and wait for the response head.

    Raises :class:`~distpat.errors.UpstreamTimeoutError` when the head did not come in time,
    :class:`~distpat.errors.UpstreamError` when no upstream could be reached or one broke,
    :class:`~distpat.errors.LocalProtocolError` (500) when ``forward.order`` names a server the
    pool does not have, :class:`~distpat.errors.RemoteProtocolError` (400) for a request that
    cannot be forwarded."""
    order = forward.order if forward is not None else ()
    candidates = pool.candidates(order)
    if candidates is None:
        raise LocalProtocolError(
            f"the order {list(order)} names servers pool {pool.name!r} does not have", status=500
        )
    headers = upstream_request_headers(request, forward, settings)
    target = forward.target if forward is not None and forward.target is not None else target_of(request)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    failures: list[str] = []
    for upstream in candidates:
        pool.enter(upstream)
        try:
            response = await session.request(
                request.method,
                _url(upstream, target),
                headers=headers,
                data=_request_body(request) if request.body_exists else None,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                allow_redirects=False,
                auto_decompress=False,
                timeout=timeout,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            pool.leave(upstream)
            failures.append(f"{upstream.name}: {_why(exc)}")
            continue  # nothing was sent: the next one
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            pool.leave(upstream)
            raise UpstreamTimeoutError(
                f"{upstream.name} of pool {pool.name!r} sent no response within {settings.read_timeout:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            pool.leave(upstream)
            raise UpstreamError(f"{upstream.name} of pool {pool.name!r} failed: {_why(exc)}") from exc
        except BaseException:
            pool.leave(upstream)
            raise
        fields = tuple(strip_hop_by_hop(list(response.raw_headers)))
        return Upstreamed(response, upstream, pool, fields)
    raise UpstreamError(f"no upstream of pool {pool.name!r} could be reached ({'; '.join(failures)})")


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timed out"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.strerror:
        return exc.os_error.strerror.lower()
    return str(exc) or type(exc).__name__


def response_headers(up: Upstreamed, settings: ProxySettings) -> CIMultiDict[str]:
    """The fields the client gets for ``up``'s response: hop-by-hop ones dropped, Via added."""
    return multidict(tuple(forward_response_headers(list(up.response.raw_headers), via=settings.via)))


@dataclass(slots=True)
class Relayed:
    """How a relayed response ended."""

    response: web.StreamResponse
    kind: OutcomeKind
    """ANSWERED (whole), UPSTREAM_FAILED / TIMED_OUT (cut), CLIENT_GONE (the client left)."""
    sent: int
    """Body bytes written to the client."""
    body: bytes | None
    """The body, when ``capture`` was asked for and it was complete within it."""


async def relay(
    request: web.BaseRequest, up: Upstreamed, headers: CIMultiDict[str], *, capture: int = 0
) -> Relayed:
    """Stream ``up``'s response to the client with ``headers``, and close ``up``."""
    response = web.StreamResponse(status=up.response.status, reason=up.response.reason, headers=headers)
    captured: bytearray | None = bytearray() if capture else None
    sent = 0
    kind = OutcomeKind.ANSWERED
    reader = up.response.content
    try:
        await response.prepare(request)
        while True:
            try:
                chunk = await reader.readany()
            except TimeoutError:
                kind = OutcomeKind.TIMED_OUT
                break
            except (aiohttp.ClientError, OSError):
                kind = OutcomeKind.UPSTREAM_FAILED
                break
            if not chunk:
                break
            if captured is not None:
                captured += chunk
                if len(captured) > capture:
                    captured = None
            await response.write(chunk)
            sent += len(chunk)
        if kind is not OutcomeKind.ANSWERED:
            log.warning(
                "%s %s: %s of pool %s broke off its response after %d bytes (%s)",
                request.method, request.raw_path[:200], up.upstream.name, up.pool.name, sent, kind.value,
            )  # fmt: skip
            response.force_close()
            if request.transport is not None:
                request.transport.close()  # the client must see the response cut, not complete
        else:
            await response.write_eof()
    except ConnectionError:
        kind = OutcomeKind.CLIENT_GONE
    finally:
        up.close()
    body = bytes(captured) if captured is not None and kind is OutcomeKind.ANSWERED else None
    return Relayed(response, kind, sent, body)


def proxy_handler(
    *, pool: str, pools: UpstreamPools | None = None, settings: ProxySettings | None = None
) -> Handler:
    """A request handler that forwards every request to the pool named ``pool``.

    The pools are ``pools``, or the application's (:data:`~distpat.aiohttp.state.UPSTREAM_POOLS`,
    stored by :func:`~distpat.aiohttp.setup` or :func:`~distpat.aiohttp.state.client_context`);
    the client session is the application's :data:`~distpat.aiohttp.state.CLIENT_SESSION`. Behind
    a pipeline middleware, the fields and target its stages set for the application have
    already been applied to the request this handler gets."""
    options = settings if settings is not None else ProxySettings()

    async def handler(request: web.Request) -> web.StreamResponse:
        known = pools if pools is not None else request.config_dict.get(UPSTREAM_POOLS)
        found = known.get(pool) if known is not None else None
        if found is None:
            raise ConfigError(
                f"proxy_handler: no pool named {pool!r} (give pools=, or use setup(app, pools=...))"
            )
        try:
            up = await open_upstream(request.config_dict[CLIENT_SESSION], request, found, None, options)
        except UpstreamTimeoutError as exc:
            return answer_response(failure_answer(504, str(exc)))
        except UpstreamError as exc:
            return answer_response(failure_answer(502, str(exc)))
        except ProtocolError as exc:  # an order the pool does not have, a request that cannot go on
            return answer_response(failure_answer(exc.status, str(exc)))
        relayed = await relay(request, up, response_headers(up, options))
        return relayed.response

    return handler
