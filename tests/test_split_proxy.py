"""The experiment router over real loopback sockets: `distpat split`'s configuration served by the
engine, with recording backends for each variant and for the mirror.

Variants reach their pools, assignments stick (across servers too), visitors get their cookie,
the override and variant fields work both ways, failover stays in the variant's pool, a slow or a
dead mirror leaves the primary's answers as they were (and never holds them), and /metrics counts
requests by variant.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

from distpat.config.split import build_split_config
from distpat.core.split import SplitTable, mirrored
from distpat.net.proxy import ProxyServer
from tests.httpkit import HOST, Backend, Reply, Request, Response, exchange

TABLE = SplitTable.from_variants([("new", "30"), ("old", "*")])
KEYS = [b"user-%d" % i for i in range(40)]


def named(name: str, delay: float = 0.0):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Reply:
        return Reply(body=name.encode() + b" " + request.target + b" %d" % len(request.body), delay=delay)

    return handler


def dead_url() -> str:
    """A 127.0.0.1 port nothing listens on (bound once, then let go)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return f"http://{HOST}:{s.getsockname()[1]}"


@contextlib.asynccontextmanager
async def router(
    variants: Sequence[str], *flags: tuple[str, Any], admin: bool = False
) -> AsyncIterator[ProxyServer]:
    values: dict[str, Any] = {"listen": f"{HOST}:0", "variant": list(variants), "connect_timeout": "1s"}
    for name, value in flags:
        if isinstance(value, list):
            values.setdefault(name, []).extend(value)
        else:
            values[name] = value
    if admin:
        values["admin"] = f"{HOST}:0"
    config, _ = build_split_config(values, environ={})
    server = ProxyServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)


async def get(port: int, target: bytes = b"/", *fields: tuple[bytes, bytes], body: bytes = b"") -> Response:
    head = b"".join(b"%s: %s\r\n" % f for f in fields)
    method = b"POST" if body else b"GET"
    framing = b"Content-Length: %d\r\n" % len(body) if body else b""
    [r] = await exchange(
        port, b"%s %s HTTP/1.1\r\nHost: h\r\n%s%s\r\n%s" % (method, target, head, framing, body)
    )
    return r


def user(key: bytes) -> tuple[bytes, bytes]:
    return (b"X-User", key)


async def test_each_key_reaches_its_variants_pool_and_sticks_across_servers() -> None:
    async with Backend(named("new")) as new, Backend(named("old")) as old, Backend(named("old2")) as old2:
        variants = [f"new:30:{new.url}", f"old:*:{old.url}", f"old::{old2.url}"]
        seen: dict[bytes, bytes] = {}
        async with router(variants, ("key", "header:X-User")) as p:
            for key in KEYS:
                r = await get(p.port, b"/x", user(key))
                assert r.status == 200
                served = r.body.split()[0]
                assert served in ((b"new",) if TABLE.variant(key) == "new" else (b"old", b"old2")), key
                seen[key] = b"new" if served == b"new" else b"old"
        assert {k for k, v in seen.items() if v == b"new"} == {k for k in KEYS if TABLE.variant(k) == "new"}
        assert len(old.requests)
        assert len(old2.requests)
        # a second server (a restart, another worker) assigns every key the same way
        async with router(variants, ("key", "header:X-User")) as again:
            for key in KEYS[:15]:
                r = await get(again.port, b"/y", user(key))
                assert (b"new" if r.body.startswith(b"new") else b"old") == seen[key]


async def test_query_and_ip_keys() -> None:
    async with Backend(named("new")) as new, Backend(named("old")) as old:
        variants = [f"new:30:{new.url}", f"old:*:{old.url}"]
        async with router(variants, ("key", "query:uid")) as p:
            for key in KEYS[:12]:
                r = await get(p.port, b"/p?uid=" + key)
                assert r.body.split()[0].decode() == TABLE.variant(key)
        async with router(variants, ("key", "ip")) as p:
            r = await get(p.port)
            assert r.body.split()[0].decode() == TABLE.variant(HOST.encode())


async def test_a_visitor_gets_a_cookie_and_keeps_its_variant() -> None:
    async with Backend(named("new")) as new, Backend(named("old")) as old:
        variants = [f"new:30:{new.url}", f"old:*:{old.url}"]
        async with router(variants, ("cookie", "sid"), ("variant_header", "X-Variant")) as p:
            for _ in range(6):
                first = await get(p.port, b"/", (b"Cookie", b"theme=dark"))
                set_cookie = first.header(b"set-cookie")
                assert set_cookie is not None
                pair, _, attributes = set_cookie.partition(b"; ")
                assert attributes == b"Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
                ident = pair.removeprefix(b"sid=")
                assert len(ident) == 16
                variant = TABLE.variant(ident)
                assert first.body.split()[0].decode() == variant
                assert first.header(b"x-variant") == variant.encode()
                backend = new if variant == "new" else old
                assert backend.requests[-1].header(b"cookie") == b"theme=dark; sid=" + ident
                for _ in range(3):
                    later = await get(p.port, b"/", (b"Cookie", b"sid=" + ident))
                    assert later.header(b"set-cookie") is None
                    assert later.body.split()[0].decode() == variant
        idents = {r.header(b"cookie") for b in (new, old) for r in b.requests}
        assert len(idents) >= 6  # a fresh ID for each new visitor


async def test_the_override_and_the_variant_field_both_ways() -> None:
    async with Backend(named("new")) as new, Backend(named("old")) as old:
        variants = [f"new:30:{new.url}", f"old:*:{old.url}"]
        flags = (("key", "header:X-User"), ("override_header", "X-Force"), ("variant_header", "X-Variant"))
        async with router(variants, *flags) as p:
            old_key = next(k for k in KEYS if TABLE.variant(k) == "old")
            r = await get(p.port, b"/", user(old_key), (b"X-Force", b"new"), (b"X-Variant", b"forged"))
            assert r.body.startswith(b"new")
            assert r.header(b"x-variant") == b"new"
            sent = new.requests[-1]
            assert [v for n, v in sent.headers if n.lower() == b"x-variant"] == [
                b"new"
            ]  # the client's dropped
            r = await get(p.port, b"/", user(old_key), (b"X-Force", b"nonesuch"))
            assert r.body.startswith(b"old")
            assert r.header(b"x-variant") == b"old"
            assert old.requests[-1].header(b"x-variant") == b"old"


async def test_failover_stays_in_the_variants_pool() -> None:
    async with Backend(named("new")) as new, Backend(named("old")) as old:
        variants = [f"new:30:{dead_url()}", f"new::{new.url}", f"old:*:{old.url}"]
        async with router(variants, ("key", "header:X-User")) as p:
            new_keys = [k for k in KEYS if TABLE.variant(k) == "new"][:6]
            for key in new_keys:
                r = await get(p.port, b"/", user(key))
                assert r.status == 200
                assert r.body.startswith(b"new")
            assert not old.requests
        # a variant whose every server is down answers 502: its users are never sent to another variant
        async with router([f"new:30:{dead_url()}", f"old:*:{old.url}"], ("key", "header:X-User")) as p:
            for key in new_keys[:3]:
                assert (await get(p.port, b"/", user(key))).status == 502
            assert not old.requests


async def _answers_and_times(port: int, keys: list[bytes]) -> tuple[list[tuple[int, bytes]], list[float]]:
    loop = asyncio.get_running_loop()
    answers, times = [], []
    for key in keys:
        start = loop.time()
        r = await get(port, b"/m", user(key), body=b"payload-" + key)
        times.append(loop.time() - start)
        answers.append((r.status, r.body))
    return answers, times


async def test_a_slow_or_dead_mirror_leaves_the_primarys_answers_as_they_were() -> None:
    keys = KEYS[:20]
    chosen = [k for k in keys if mirrored(k, 5000)]
    assert chosen
    async with (
        Backend(named("new")) as new,
        Backend(named("old")) as old,
        Backend(named("mirror", delay=2.0)) as slow,
    ):
        variants = [f"new:30:{new.url}", f"old:*:{old.url}"]
        async with router(variants, ("key", "header:X-User")) as p:
            plain, _ = await _answers_and_times(p.port, keys)
        for mirror in (slow.url, dead_url()):
            flags = (("key", "header:X-User"), ("mirror", [mirror]), ("mirror_percent", "50"))
            async with router(variants, *flags) as p:
                answers, times = await _answers_and_times(p.port, keys)
                assert answers == plain
                assert max(times) < 1.5, times  # the mirror's 2 s never holds a primary answer
                if mirror == slow.url:
                    for _ in range(100):  # the copies arrive (their answers come 2 s later, discarded)
                        if len(slow.requests) >= len(chosen):
                            break
                        await asyncio.sleep(0.05)
                    copies = sorted(r.body for r in slow.requests)
                    assert copies == sorted(b"payload-" + k for k in chosen)
                    assert {r.target for r in slow.requests} == {b"/m"}
                else:  # every copy to the dead mirror fails, and is counted
                    line = (
                        f'distpat_mirror_requests_total{{pool="mirror",result="failed"}} {float(len(chosen))}'
                    )
                    for _ in range(100):
                        if line in p.metrics.render()[0].decode():
                            break
                        await asyncio.sleep(0.05)
                    assert line in p.metrics.render()[0].decode()


async def _metrics(port: int) -> str:
    [r] = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert r.status == 200
    return r.body.decode()


async def test_requests_are_counted_by_variant_on_metrics() -> None:
    async with Backend(named("new")) as new, Backend(named("old")) as old:
        variants = [f"new:30:{new.url}", f"old:*:{old.url}"]
        async with router(variants, ("key", "header:X-User"), admin=True) as p:
            for key in KEYS:
                await get(p.port, b"/", user(key))
            assert p.admin_port is not None
            text = await _metrics(p.admin_port)
        expected = {v: sum(TABLE.variant(k) == v for k in KEYS) for v in ("new", "old")}
        for variant, count in expected.items():
            line = f'distpat_stage_decisions_total{{decision="{variant}",stage="split"}} {float(count)}'
            assert line in text, [ln for ln in text.splitlines() if "decisions" in ln]


async def test_a_reload_applies_new_shares_and_keeps_the_first_variants_users() -> None:
    async with Backend(named("new")) as new, Backend(named("old")) as old:
        flags = {"listen": f"{HOST}:0", "key": "header:X-User"}
        config, _ = build_split_config(
            {**flags, "variant": [f"new:30:{new.url}", f"old:*:{old.url}"]}, environ={}
        )
        server = ProxyServer(config)
        await server.start()
        try:
            before = {k: (await get(server.port, b"/", user(k))).body.split()[0] for k in KEYS}
            grown, _ = build_split_config(
                {**flags, "variant": [f"new:60:{new.url}", f"old:*:{old.url}"]}, environ={}
            )
            server.reconfigure(grown)
            after = {k: (await get(server.port, b"/", user(k))).body.split()[0] for k in KEYS}
        finally:
            await server.shutdown(1)
        bigger = SplitTable.from_variants([("new", "60"), ("old", "*")])
        assert after == {k: bigger.variant(k).encode() for k in KEYS}
        assert all(after[k] == b"new" for k in KEYS if before[k] == b"new")
        assert sum(v == b"new" for v in after.values()) > sum(v == b"new" for v in before.values())
