"""examples/aiohttp_app.py: the split and shard routers in one aiohttp application.

The application is built with the example's ``create_app`` and driven by aiohttp's test client
(TestServer/TestClient); its shards are three real aiohttp servers on 127.0.0.1 that answer
with their own name (tests/aiohttpkit.py). The oracles are distpat's core objects: the split's
table and MurmurHash2 (nginx's ``split_clients``) and :class:`NginxChashRing` (nginx's ``hash
$request_uri consistent``, checked against a real nginx in tests/test_nginx_chash_interop.py).
Last, the example runs as the command the page shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import math
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from distpat.core.ring import NginxChashRing
from distpat.core.split import SplitTable, murmur2
from tests.aiohttpkit import HOST, Named, named_upstreams, the_cookie
from tests.nutcracker import free_ports, port_accepts

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "aiohttp_app.py"
WAIT = 20.0  # seconds the example process may take to listen, or to exit, before the test fails
TABLE = SplitTable.from_variants([("a", "50"), ("b", "*")])


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("aiohttp_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()
create_app: Callable[[list[str]], web.Application] = example.create_app


@contextlib.asynccontextmanager
async def front(shards: list[Named]) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The example's application under aiohttp's test server, and a client that keeps no cookies
    (each test sends the Cookie field itself, so every request without one is a new visitor)."""
    app = create_app([s.url for s in shards])
    async with TestClient(TestServer(app, host=HOST), cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


# --------------------------------------------------------------------------
# GET /variant


async def test_a_first_visit_gets_a_cookie_and_a_variant_and_keeps_both() -> None:
    given: dict[str, str] = {}
    async with named_upstreams(3) as shards, front(shards) as client:
        for _ in range(8):
            first = await client.get("/variant")
            assert first.status == 200
            assert first.content_type == "application/json"
            ident = the_cookie(first)
            variant = (await first.json())["variant"]
            # the variant is the ID's, as nginx's split_clients over $cookie_visitor places it
            assert variant == TABLE.variant_for_hash(murmur2(ident.encode()))
            given[ident] = variant
            for _ in range(3):
                again = await client.get("/variant", headers={"Cookie": f"theme=dark; visitor={ident}"})
                assert await again.json() == {"variant": variant}
                assert "Set-Cookie" not in again.headers
        assert all(not s.requests for s in shards)  # the split answers nothing upstream
    # a restarted application (a new one) keeps every visitor's variant: nothing but the ID decides
    async with named_upstreams(3) as shards, front(shards) as client:
        for ident, variant in given.items():
            response = await client.get("/variant", headers={"Cookie": f"visitor={ident}"})
            assert await response.json() == {"variant": variant}


async def test_fresh_visitors_are_split_half_and_half() -> None:
    visitors = 400
    counts = {"a": 0, "b": 0}
    idents: set[str] = set()
    async with named_upstreams(3) as shards, front(shards) as client:
        for _ in range(visitors):
            response = await client.get("/variant")
            idents.add(the_cookie(response))
            counts[(await response.json())["variant"]] += 1
    assert len(idents) == visitors  # every visitor a new ID
    sd = math.sqrt(visitors * 0.5 * 0.5)
    assert abs(counts["a"] - visitors / 2) <= 4 * sd, counts


async def test_the_split_covers_only_variant() -> None:
    async with named_upstreams(3) as shards, front(shards) as client:
        response = await client.get("/shard/page")
        assert response.status == 200
        assert "Set-Cookie" not in response.headers
        (seen,) = [r for s in shards for r in s.requests]
        assert "cookie" not in {k.lower() for k, _ in seen["headers"]}
        assert (await client.get("/variant/")).status == 404  # covered, but no route


# --------------------------------------------------------------------------
# /shard/{tail}


def uris() -> list[str]:
    """About a hundred request targets: paths, queries, percent-encodings, a deep one."""
    found = [f"/shard/item/{i}" for i in range(60)]
    found += [f"/shard/users/{i}?tab=files&page={i % 7}" for i in range(30)]
    found += [f"/shard/q%20{i}/x%2Fy" for i in range(8)]
    found += ["/shard/", "/shard/a/b/c/d/e/f/g/h?x=1&x=2"]
    return found


async def test_each_uri_reaches_the_shard_the_nginx_ring_picks() -> None:
    async with named_upstreams(3) as shards, front(shards) as client:
        ring = NginxChashRing([s.name for s in shards])  # the server lines nginx would have, in order
        hit: set[str] = set()
        for uri in uris():
            response = await client.get(uri)
            assert response.status == 200, uri
            body = await response.json()
            expected = ring.get_node(uri)  # the whole target, /shard/ included: $request_uri
            assert body["name"] == expected, uri
            assert response.headers["X-Shard"] == expected
            assert body["target"] == uri.removeprefix("/shard")  # sent on without the prefix
            hit.add(body["name"])
        assert hit == {s.name for s in shards}
        assert sum(len(s.requests) for s in shards) == len(uris())  # each went to one shard only


async def test_a_megabyte_streams_to_its_shard_and_back() -> None:
    size = 1 << 20
    piece = bytes(range(256)) * 256  # 64 KiB
    sent = hashlib.sha256(piece * (size // len(piece))).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    async with named_upstreams(3) as shards, front(shards) as client:
        expected = NginxChashRing([s.name for s in shards]).get_node("/shard/upload/echo")
        response = await client.post("/shard/upload/echo", data=body())
        assert response.status == 200
        assert response.headers["X-Name"] == response.headers["X-Shard"] == expected
        assert "Content-Length" not in response.headers  # relayed as it came: chunked, not gathered
        assert response.headers["Transfer-Encoding"] == "chunked"
        received = hashlib.sha256()
        reads = 0
        async for chunk in response.content.iter_any():
            received.update(chunk)
            reads += 1
        assert received.hexdigest() == sent
        (record,) = [r for s in shards for r in s.requests]
        assert record["name"] == expected
        assert record["received"] == size
        assert record["reads"] > 1  # the shard read the body as it came, in pieces
        assert ["Transfer-Encoding", "chunked"] in record["headers"]
        assert reads > 1


# --------------------------------------------------------------------------
# The command


def test_the_command_line_is_checked() -> None:
    assert example.main([]) == 2
    assert example.main(["8080"]) == 2
    assert example.main(["port", "http://127.0.0.1:8081"]) == 2
    assert example.main(["0", "http://127.0.0.1:8081"]) == 2
    assert example.main(["8080", "tcp://127.0.0.1:8081"]) == 2


async def test_the_example_runs_as_a_process() -> None:
    (port,) = free_ports(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    async with named_upstreams(3) as shards:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            str(port),
            *(s.url for s in shards),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while not await port_accepts(port):
                if process.returncode is not None or loop.time() > deadline:
                    raise AssertionError(f"the example did not listen on {port} (exit {process.returncode})")
                await asyncio.sleep(0.05)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
                response = await session.get(f"http://{HOST}:{port}/variant")
                ident = the_cookie(response)
                assert await response.json() == {"variant": TABLE.variant_for_hash(murmur2(ident.encode()))}
                uri = "/shard/users/17?tab=files"
                response = await session.get(f"http://{HOST}:{port}{uri}")
                body = await response.json()
                assert body["name"] == NginxChashRing([s.name for s in shards]).get_node(uri)
                assert body["target"] == "/users/17?tab=files"
            process.terminate()
            assert await asyncio.wait_for(process.wait(), WAIT) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.stderr is not None
        errors = (await process.stderr.read()).decode()
        assert "Traceback" not in errors, errors


@pytest.mark.parametrize("args", [["8080", "http://127.0.0.1:8081/path"], ["70000", "http://127.0.0.1:1"]])
async def test_the_process_refuses_bad_arguments_with_a_reason(args: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *args,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 2
    assert errors.decode().startswith("aiohttp_app: ")
    assert "usage: python examples/aiohttp_app.py PORT UPSTREAM_URL" in errors.decode()
