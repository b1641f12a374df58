"""distpat's split and shard routers inside one aiohttp application.

    python examples/aiohttp_app.py PORT UPSTREAM_URL [UPSTREAM_URL ...]

serves, on 127.0.0.1:PORT (with uvloop when it is installed):

* ``GET /variant``: ``{"variant": "a"}`` or ``{"variant": "b"}``, a sticky 50/50 split keyed by
  the ``visitor`` cookie: a first visit is given the cookie (a random ID, ``Set-Cookie``) and a
  variant at once, and every later visit with the cookie gets the same variant, here, after a
  restart, and under nginx's ``split_clients`` over ``$cookie_visitor`` with the same lines.
* ``/shard/{tail}``, any method: forwarded to the upstream that nginx's ``hash $request_uri
  consistent`` over the same ``server`` lines picks for the request's URI (the whole target as
  the client sent it, ``/shard/`` and the query included), sent on as ``/{tail}`` with the query
  (``/shard/`` removed, as nginx's ``proxy_pass http://shards/;`` in ``location /shard/``),
  both bodies streaming. The response names the shard in ``X-Shard``.

:func:`create_app` builds the application without serving it (the tests use it).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from aiohttp import web

import distpat.aiohttp
from distpat.errors import ConfigError

__all__ = ["USAGE", "create_app", "main"]

USAGE = "usage: python examples/aiohttp_app.py PORT UPSTREAM_URL [UPSTREAM_URL ...]"
HOST = "127.0.0.1"


async def variant(request: web.Request) -> web.Response:
    """The visitor's variant, which the split middleware decided before this handler ran."""
    return web.json_response({"variant": request[distpat.aiohttp.VARIANT]})


def create_app(upstreams: Sequence[str]) -> web.Application:
    """The application: the split over ``/variant``, the shards of ``upstreams`` under ``/shard/``."""
    app = web.Application()
    split = distpat.aiohttp.split_middleware(
        variants=[("a", "50"), ("b", "*")],
        key="cookie:visitor",
        paths=["/variant"],  # the shard route's requests go on untouched (no cookie, no variant)
    )
    app.middlewares.append(split)
    app.on_response_prepare.append(split.on_response_prepare)
    # the client session (distpat.aiohttp.CLIENT_SESSION) the shard handler forwards with
    app.cleanup_ctx.append(distpat.aiohttp.client_context())
    app.router.add_get("/variant", variant)
    shards = distpat.aiohttp.shard_handler(
        upstreams=upstreams, key="uri", algorithm="nginx", prefix="/shard", shard_header="X-Shard"
    )
    app.router.add_route("*", "/shard/{tail:.*}", shards)
    return app


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        port = int(argv[0])
        if not 1 <= port <= 65535:
            raise ValueError(port)
        app = create_app(argv[1:])
    except ValueError as exc:  # a bad port, or a ConfigError (a ValueError too) naming what is wrong
        reason = exc if isinstance(exc, ConfigError) else f"PORT must be from 1 to 65535, not {argv[0]!r}"
        print(f"aiohttp_app: {reason}\n{USAGE}", file=sys.stderr)
        return 2
    web.run_app(
        app,
        host=HOST,
        port=port,
        loop=_event_loop(),
        handler_cancellation=True,
        print=lambda text: print(text, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
