"""distpat.aiohttp's routers: split_middleware and shard_handler, option by option.

Each application runs under aiohttp's TestServer; the shards and variant pools are real aiohttp
servers on 127.0.0.1 answering with their name (tests/aiohttpkit.py). The expected variant comes
from the split's table and MurmurHash2, the expected shard from the ring, both pure core objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from distpat.aiohttp import (
    FORWARD,
    NOTES,
    VARIANT,
    SplitMiddleware,
    client_context,
    shard_handler,
    split_middleware,
)
from distpat.core.ring import NginxChashRing
from distpat.core.split import SplitTable, murmur2
from distpat.errors import ConfigError
from distpat.ring import make_ring
from tests.aiohttpkit import HOST, ROOT, dead_url, named_upstreams, the_cookie
from tests.test_aiohttp_driver import python_blocks

TABLE = SplitTable.from_variants([("a", "50"), ("b", "*")])
Client = TestClient[web.Request, web.Application]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def variant_of(key: str) -> str:
    return TABLE.variant_for_hash(murmur2(key.encode()))


def ident_for(variant: str) -> str:
    """A visitor ID (16 hex digits, as the split issues them) whose variant is ``variant``."""
    return next(f"{i:016x}" for i in range(1000) if variant_of(f"{i:016x}") == variant)


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[Client]:
    async with TestClient(TestServer(app, host=HOST), cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


async def what_the_handler_saw(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "variant": request.get(VARIANT),
            "notes": request.get(NOTES),
            "pool": request[FORWARD].pool if FORWARD in request else None,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "path": request.raw_path,
        }
    )


def split_app(
    handler: Handler = what_the_handler_saw, **options: Any
) -> tuple[web.Application, SplitMiddleware]:
    options.setdefault("variants", [("a", "50"), ("b", "*")])
    options.setdefault("key", "cookie:visitor")
    middleware = split_middleware(**options)
    app = web.Application()
    app.middlewares.append(middleware)
    app.on_response_prepare.append(middleware.on_response_prepare)
    app.cleanup_ctx.append(middleware.cleanup_ctx)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app, middleware


def fields(body: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in body["headers"] if k.lower() == name.lower()]


# --------------------------------------------------------------------------
# split_middleware: deciding only


async def test_a_split_that_only_decides_tells_the_handler_and_sets_the_cookie() -> None:
    app, middleware = split_app()
    assert middleware.handler_pools == {"a", "b"}
    assert "decides" in repr(middleware)
    async with serve(app) as client:
        response = await client.get("/page", headers={"Cookie": "theme=dark"})
        ident = the_cookie(response)
        body = await response.json()
        variant = variant_of(ident)
        assert body["variant"] == variant
        assert body["notes"] == {"split": variant}
        assert body["pool"] == variant  # the Forward the split decided, its pool the variant's name
        # the handler sees the Cookie field it will see from now on
        assert fields(body, "Cookie") == [f"theme=dark; visitor={ident}"]
        response = await client.get("/page", headers={"Cookie": f"visitor={ident}; theme=dark"})
        assert "Set-Cookie" not in response.headers
        body = await response.json()
        assert (body["variant"], fields(body, "Cookie")) == (variant, [f"visitor={ident}; theme=dark"])


async def test_the_override_header_names_a_variant() -> None:
    app, _ = split_app(override_header="X-Variant-Override")
    ident_a = ident_for("a")
    async with serve(app) as client:
        asked = {"Cookie": f"visitor={ident_a}"}
        assert (await (await client.get("/", headers=asked)).json())["variant"] == "a"
        for value, variant in (("b", "b"), (" b ", "b"), ("a", "a"), ("nope", "a"), ("", "a")):
            response = await client.get("/", headers={**asked, "X-Variant-Override": value})
            assert (await response.json())["variant"] == variant, value
            assert "Set-Cookie" not in response.headers
        for wanted in ("a", "b"):  # a new visitor gets the cookie, and the variant asked for
            response = await client.get("/", headers={"X-Variant-Override": wanted})
            the_cookie(response)
            assert (await response.json())["variant"] == wanted


async def test_the_variant_header_replaces_a_clients_own() -> None:
    app, _ = split_app(variant_header="X-Variant")
    async with serve(app) as client:
        for variant in ("a", "b"):
            headers = {"Cookie": f"visitor={ident_for(variant)}", "X-Variant": "forged"}
            response = await client.get("/", headers=headers)
            assert response.headers.getall("X-Variant") == [variant]
            assert fields(await response.json(), "X-Variant") == [variant]


async def test_a_response_the_handler_streams_gets_the_cookie_too() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"streamed " + request[VARIANT].encode())
        await response.write_eof()
        return response

    app, _ = split_app(stream)
    async with serve(app) as client:
        response = await client.get("/")
        ident = the_cookie(response)
        assert await response.text() == f"streamed {variant_of(ident)}"


async def test_a_header_key_sets_no_cookie_and_keyless_requests_go_to_one_variant() -> None:
    users = [f"user-{i}" for i in range(40)]
    for keyless, expected in ((None, "a"), ("b", "b")):  # murmur2(b"") is 0: the first line
        app, _ = split_app(key="header:X-User", keyless=keyless)
        async with serve(app) as client:
            for user in users:
                response = await client.get("/", headers={"X-User": user})
                assert (await response.json())["variant"] == variant_of(user)
                assert "Set-Cookie" not in response.headers
            response = await client.get("/")
            assert (await response.json())["variant"] == expected
    assert {variant_of(u) for u in users} == {"a", "b"}


async def test_paths_limit_what_the_split_covers() -> None:
    app, _ = split_app(paths=["/exp/"])
    async with serve(app) as client:
        for path in ("/exp", "/exp/", "/exp/page?x=1"):
            response = await client.get(path)
            the_cookie(response)
            assert (await response.json())["variant"] in ("a", "b"), path
        for path in ("/expert", "/other", "/"):
            response = await client.get(path)
            assert "Set-Cookie" not in response.headers
            body = await response.json()
            assert (body["variant"], body["notes"], body["pool"], body["path"]) == (None, None, None, path)
    assert split_app(paths=["/"])[1].paths is None  # "/" covers everything


# --------------------------------------------------------------------------
# split_middleware: a pool per variant


async def test_with_pools_each_variant_goes_to_its_own() -> None:
    called: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        called.append(request.path)
        return web.Response(text="the application")

    async with named_upstreams(2) as (up_a, up_b):
        app, middleware = split_app(
            handler, pools={"a": [up_a.url], "b": [up_b.url]}, variant_header="X-Variant"
        )
        assert middleware.handler_pools == frozenset()
        by_variant = {"a": up_a, "b": up_b}
        async with serve(app) as client:
            seen = set()
            for _ in range(24):
                response = await client.get("/item?x=1", headers={"X-Variant": "forged"})
                ident = the_cookie(response)
                variant = variant_of(ident)
                body = await response.json()
                assert body["name"] == by_variant[variant].name
                assert body["target"] == "/item?x=1"
                assert fields(body, "Cookie") == [f"visitor={ident}"]
                assert fields(body, "X-Variant") == [variant]
                assert response.headers["X-Variant"] == variant
                seen.add(variant)
            assert seen == {"a", "b"}
        assert called == []


async def test_a_variant_pool_that_cannot_be_reached_answers_502_with_the_cookie() -> None:
    async with named_upstreams(1) as (up,):
        app, _ = split_app(pools={"a": [dead_url()], "b": [up.url]}, override_header="X-Force")
        async with serve(app) as client:
            response = await client.get("/", headers={"Cookie": f"visitor={ident_for('b')}"})
            assert (await response.json())["name"] == up.name
            response = await client.get("/", headers={"Cookie": f"visitor={ident_for('a')}"})
            assert response.status == 502
            assert "no upstream of pool 'a' could be reached" in await response.text()
            response = await client.get("/", headers={"X-Force": "a"})  # a new visitor
            assert response.status == 502
            the_cookie(response)  # the engine's own answer carries the split's fields too


def test_a_split_that_cannot_work_is_refused_with_a_reason() -> None:
    refused: list[tuple[dict[str, Any], str]] = [
        ({"variants": "a:50"}, "pairs, not one string"),
        ({"variants": [("a", 50.0), ("b", "*")]}, "its share is a percentage"),
        ({"variants": [("a", "50")]}, "total"),
        ({"variants": [("a", "50"), ("b", "*")], "key": "uri"}, "use one of"),
        ({"variants": [("a b", "50"), ("b", "*")]}, "letters, digits"),
        ({"pools": {"a": ["http://127.0.0.1:1"]}}, "variant 'b' has no pool"),
        ({"pools": {"a": ["http://127.0.0.1:1"], "b": ["http://127.0.0.1:2"], "c": []}}, "not a variant"),
        ({"pools": {"a": ["http://127.0.0.1:1/x"], "b": ["http://127.0.0.1:2"]}}, "give scheme, host"),
        ({"paths": "/exp"}, "not one string"),
        ({"paths": ["exp"]}, "must begin with '/'"),
        ({"keyless": "c"}, "keyless variant"),
    ]
    for options, reason in refused:
        options.setdefault("variants", [("a", "50"), ("b", "*")])
        options.setdefault("key", "cookie:visitor")
        with pytest.raises(ConfigError, match=reason):
            split_middleware(**options)
    assert split_middleware(variants={"a": 50, "b": "*"}, key="ip").stage.variants() == (
        ("a", "50"),
        ("b", "50"),
    )


# --------------------------------------------------------------------------
# shard_handler


def shard_app(route: str = "/{tail:.*}", **options: Any) -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(client_context())
    app.router.add_route("*", route, shard_handler(**options))
    return app


async def test_without_a_prefix_the_target_goes_on_unchanged() -> None:
    async with named_upstreams(3) as shards:
        ring = NginxChashRing([s.name for s in shards])
        async with serve(shard_app(upstreams=[s.url for s in shards])) as client:
            for i in range(30):
                uri = f"/shard/k{i}?v={i}"
                body = await (await client.get(uri)).json()
                assert (body["name"], body["target"]) == (ring.get_node(uri), uri)


async def test_a_prefix_is_removed_from_the_target_sent_but_not_from_the_key() -> None:
    async with named_upstreams(3) as shards:
        ring = NginxChashRing([s.name for s in shards])
        app = shard_app("/shard{tail:.*}", upstreams=[s.url for s in shards], prefix="/shard/")
        async with serve(app) as client:
            for uri, sent in (
                ("/shard", "/"),
                ("/shard?x=1", "/?x=1"),
                ("/shard/", "/"),
                ("/shard/a/b?c=d", "/a/b?c=d"),
                ("/shardx/y", "/shardx/y"),  # not under /shard: sent as it came
            ):
                body = await (await client.get(uri)).json()
                assert (body["name"], body["target"]) == (ring.get_node(uri), sent), uri


async def test_replicas_fail_over_along_the_ring_and_only_there() -> None:
    dead = dead_url()
    dead_name = dead.removeprefix("http://")
    async with named_upstreams(3) as shards:
        urls = [dead, *(s.url for s in shards)]
        ring = NginxChashRing([u.removeprefix("http://") for u in urls])
        uris = [u for u in (f"/k/{i}" for i in range(400)) if ring.get_node(u) == dead_name][:12]
        assert len(uris) == 12
        app = shard_app(upstreams=urls, replicas=2, shard_header="X-Shard")
        async with serve(app) as client:
            for uri in uris:
                for method in ("GET", "POST"):  # nothing reached the dead one: a POST moves on too
                    response = await client.request(method, uri, data=b"x" if method == "POST" else None)
                    assert response.status == 200
                    body = await response.json()
                    assert body["name"] == list(ring.iter_nodes(uri))[1], uri
                    assert response.headers["X-Shard"] == dead_name  # the key's shard, by the ring
        for s in shards:
            s.requests.clear()
        async with serve(shard_app(upstreams=urls, shard_header="X-Shard")) as client:
            response = await client.get(uris[0])
            assert response.status == 502
            assert response.headers["X-Shard"] == dead_name
            assert "no upstream of pool 'shards' could be reached" in await response.text()
        assert all(not s.requests for s in shards)  # with no replica, no other shard is asked


async def test_a_header_key_weights_and_requests_without_a_key() -> None:
    async with named_upstreams(3) as shards:
        weights = {shards[0].url: 1, shards[1].url: 1, shards[2].url: 2}
        ring = NginxChashRing({s.name: w for s, w in zip(shards, weights.values(), strict=True)})
        async with serve(shard_app(upstreams=weights, key="header:X-Tenant")) as client:
            for i in range(40):
                tenant = f"tenant-{i}"
                response = await client.get(f"/any/{i}", headers={"X-Tenant": tenant})
                assert (await response.json())["name"] == ring.get_node(tenant)
            for s in shards:
                s.requests.clear()
            for _ in range(3):  # no key: the shards take turns, as nginx's hash sends it to round robin
                await client.get("/no-tenant")
            assert [len(s.requests) for s in shards] == [1, 1, 1]


async def test_another_ring_algorithm() -> None:
    async with named_upstreams(3) as shards:
        ring = make_ring("rendezvous", [s.name for s in shards])
        async with serve(shard_app(upstreams=[s.url for s in shards], algorithm="rendezvous")) as client:
            for i in range(20):
                body = await (await client.get(f"/r/{i}")).json()
                assert body["name"] == ring.get_node(f"/r/{i}")


async def test_bounded_loads_read_the_handlers_own_in_flight_counts() -> None:
    async with named_upstreams(3) as shards:
        ring = NginxChashRing([s.name for s in shards])
        app = shard_app(upstreams=[s.url for s in shards], balance_factor=1.0)
        async with serve(app) as client:
            for i in range(10):  # one at a time: every load is 0, each goes to its ring shard
                body = await (await client.get(f"/b/{i}")).json()
                assert body["name"] == ring.get_node(f"/b/{i}")
            # the same URI three times, each held at its shard: with c = 1 the cap is
            # ceil((total + 1) / 3) = 1, so each goes to the next shard of the URI's ring order
            uri = "/same/hold"
            held = []
            for n in range(1, 4):
                held.append(asyncio.ensure_future(client.get(uri)))
                await until(lambda n=n: sum(s.hits(uri) for s in shards) == n, f"request {n} held")
            for s in shards:
                s.release.set()
            names = [(await (await task).json())["name"] for task in held]
        assert names == list(ring.iter_nodes(uri))


async def test_behind_a_split_the_shard_handler_keeps_the_splits_keys_and_fields() -> None:
    async with named_upstreams(3) as shards:
        ring = NginxChashRing([s.name for s in shards])
        shard = shard_handler(upstreams=[s.url for s in shards], shard_header="X-Shard")
        kept: list[tuple[object, object, object]] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            response = await shard(request)
            kept.append((request[VARIANT], request[NOTES], request[FORWARD].pool))
            return response

        app, _ = split_app(handler)
        async with serve(app) as client:
            response = await client.get("/s/1?a=b")
            ident = the_cookie(response)  # on a response relayed as it streams in
            variant = variant_of(ident)
            assert response.headers["X-Shard"] == ring.get_node("/s/1?a=b")
            body = await response.json()
            assert body["name"] == ring.get_node("/s/1?a=b")
            assert fields(body, "Cookie") == [f"visitor={ident}"]  # the request as the split passed it on
        assert kept == [(variant, {"split": variant}, variant)]


async def test_a_shard_handler_without_a_client_session_says_what_to_add(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", shard_handler(upstreams=["http://127.0.0.1:1"]))
    async with serve(app) as client:
        assert (await client.get("/x")).status == 500
    assert "app.cleanup_ctx.append(distpat.aiohttp.client_context())" in caplog.text


def test_a_shard_handler_that_cannot_work_is_refused_with_a_reason() -> None:
    one, two = "http://127.0.0.1:8081", "http://127.0.0.1:8082"
    refused: list[tuple[dict[str, Any], str]] = [
        ({"upstreams": one}, "not one string"),
        ({"upstreams": []}, "at least one upstream"),
        ({"upstreams": [one, one]}, "listed twice"),
        ({"upstreams": ["tcp://127.0.0.1:1"]}, "use http://"),
        ({"upstreams": {one: 0}}, "a weight is a whole number"),
        ({"upstreams": {one: True}}, "a weight is a whole number"),
        ({"upstreams": [one, two], "algorithm": "crc"}, "unknown ring algorithm"),
        ({"upstreams": [one, two], "replicas": 3}, "replicas must be a whole number from 1 to 2"),
        ({"upstreams": [one], "key": "ip"}, "use one of"),
        ({"upstreams": [one], "prefix": "shard"}, "prefix must be a path"),
        ({"upstreams": [one], "prefix": "/"}, "prefix must be a path"),
        ({"upstreams": [one], "prefix": "/a?b"}, "prefix must be a path"),
        ({"upstreams": [one], "shard_header": "X Shard"}, "token characters"),
    ]
    for options, reason in refused:
        with pytest.raises(ConfigError, match=reason):
            shard_handler(**options)


# --------------------------------------------------------------------------
# The page


async def test_the_routers_code_of_docs_aiohttp_md_runs() -> None:
    """The page's python blocks run in one namespace; ``build_routed_app(shard_urls)`` is served."""
    namespace: dict[str, Any] = {"__name__": "docs_aiohttp_routers"}
    for block in python_blocks(ROOT / "docs" / "aiohttp.md"):
        exec(compile(block, "docs/aiohttp.md", "exec"), namespace)
    build: Callable[[Sequence[str]], web.Application] = namespace["build_routed_app"]
    async with named_upstreams(2) as shards:
        ring = NginxChashRing([s.name for s in shards])
        async with serve(build([s.url for s in shards])) as client:
            response = await client.get("/")
            ident = the_cookie(response)
            assert await response.text() == f"hello, variant {variant_of(ident)}"
            assert response.headers["X-Variant"] == variant_of(ident)
            response = await client.get(
                "/", headers={"Cookie": f"visitor={ident}", "X-Variant-Override": "b"}
            )
            assert await response.text() == "hello, variant b"
            uri = "/cache/users/17?tab=files"
            response = await client.get(uri, headers={"Cookie": f"visitor={ident}"})
            body = json.loads(await response.text())
            assert (body["name"], body["target"]) == (ring.get_node(uri), "/users/17?tab=files")
            assert response.headers["X-Shard"] == ring.get_node(uri)
