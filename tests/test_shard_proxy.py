"""`distpat shard` as a real process in front of five small upstreams on 127.0.0.1.

Each upstream answers its own name. The test computes where every request belongs with
NginxChashRing over the servers' ``host:port`` (what nginx's ``hash $request_uri consistent``
does for the same ``server`` lines) and checks, from what each upstream saw, that the requests
went there and nowhere else: placement, failover to the ring's next node with ``--replicas``,
no second copy of a POST that reached a server, ``--shard-header``, and the per-shard counts on
``/metrics``.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp

from distpat.core.ring import NginxChashRing
from tests.httpkit import HOST, Backend, RawClient, Reply, Request, Response
from tests.nutcracker import free_ports
from tests.test_nginx_chash_interop import Upstream, labels, request_targets, running_nginx
from tests.tlskit import running_distpat

SHARDS = 5


def naming_backend() -> Backend:
    """An upstream whose every answer is its own name, ``127.0.0.1:PORT``."""
    backend = Backend()

    async def handler(request: Request) -> Reply:
        return Reply(body=f"{HOST}:{backend.port}".encode(), headers=[(b"Content-Type", b"text/plain")])

    backend.handler = handler
    return backend


@contextlib.asynccontextmanager
async def backends(count: int = SHARDS) -> AsyncIterator[list[Backend]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(naming_backend()) for _ in range(count)]


@contextlib.asynccontextmanager
async def shard(
    tmp_path: Path, upstreams: Sequence[str], *args: str, admin: bool = False
) -> AsyncIterator[tuple[int, int]]:
    """``distpat shard`` over ``upstreams``: its port and its admin port (0 without one)."""
    port, admin_port = free_ports(2)
    extra = ["--admin", f"{HOST}:{admin_port}"] if admin else []
    argv = ["--listen", f"{HOST}:{port}", *[w for u in upstreams for w in ("--upstream", u)], *extra, *args]
    async with running_distpat("shard", tmp_path, port, argv, also=[admin_port] if admin else []):
        yield port, admin_port if admin else 0


async def get_all(port: int, targets: Sequence[bytes], method: bytes = b"GET") -> list[Response]:
    """One keep-alive connection, one request after another (bounded: one response awaited each)."""
    client = await RawClient.connect(port)
    out: list[Response] = []
    try:
        for target in targets:
            await client.send(
                b"%s %s HTTP/1.1\r\nHost: shard.test\r\nContent-Length: 0\r\n\r\n" % (method, target)
            )
            (response,) = await client.read_responses(1, timeout=10)
            out.append(response)
    finally:
        await client.close()
    return out


def names_of(bs: Sequence[Backend]) -> list[str]:
    return [f"{HOST}:{b.port}" for b in bs]


def targets(count: int) -> list[bytes]:
    extras = [b"/", b"/a?b=c&d=%2F", b"/%E2%82%AC/x", b"/users/17?sort=desc", b"//double//slash"]
    return extras + [b"/objects/%d?v=%d" % (i, i % 5) for i in range(count)]


# -- placement ----------------------------------------------------------------------------


async def test_each_uri_goes_where_nginx_hash_consistent_puts_it(tmp_path: Path) -> None:
    async with backends() as bs:
        names = names_of(bs)
        ring = NginxChashRing(names)
        uris = targets(300)
        async with shard(tmp_path, [b.url for b in bs], "--shard-header", "X-Shard") as (port, _):
            responses = await get_all(port, uris)
        for uri, response in zip(uris, responses, strict=True):
            expected = ring.get_node(uri)
            assert response.status == 200, (uri, response)
            assert response.body.decode() == expected, uri
            assert response.header(b"X-Shard") == expected.encode()
        for b, name in zip(bs, names, strict=True):
            assert [r.target for r in b.requests] == [u for u in uris if ring.get_node(u) == name]
        assert all(b.requests for b in bs)  # 305 URIs reach every shard


async def test_weights_place_keys_as_nginx_weight(tmp_path: Path) -> None:
    async with backends(3) as bs:
        names = names_of(bs)
        ring = NginxChashRing({names[0]: 3, names[1]: 1, names[2]: 2})
        uris = targets(150)
        upstreams = [f"{bs[0].url},weight=3", bs[1].url, f"{bs[2].url},weight=2"]
        async with shard(tmp_path, upstreams) as (port, _):
            responses = await get_all(port, uris)
        assert [r.body.decode() for r in responses] == [ring.get_node(u) for u in uris]


async def test_distpat_shard_and_nginx_send_every_uri_to_the_same_server(tmp_path: Path) -> None:
    """A site moving from nginx: the same servers in the same order, weights included, and a real
    nginx's ``hash $request_uri consistent`` in front of them; every URI meets the same server
    through either. The servers are nginx's own ``server`` blocks, each answering a label."""
    front, *ports = free_ports(6)
    servers = {f"{HOST}:{p}": (3 if i == 1 else 1) for i, p in enumerate(ports)}
    upstream = Upstream("u0", servers)
    uris = [u.encode() for u in request_targets(random.Random(20260101), "u0", 400)]
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    shards = [f"http://{s}" + (f",weight={w}" if w != 1 else "") for s, w in servers.items()]
    with running_nginx(workdir, front, [upstream]):
        async with shard(tmp_path, shards) as (port, _):
            through_distpat = [r.body.decode() for r in await get_all(port, uris)]
        through_nginx = [r.body.decode() for r in await get_all(front, uris)]
    assert through_distpat == through_nginx
    assert set(through_nginx) == set(labels([upstream]).values())  # every server had some


# -- failover -----------------------------------------------------------------------------


async def test_replicas_send_a_dead_shards_requests_to_the_rings_next_node_only(tmp_path: Path) -> None:
    async with backends(4) as live:
        (dead_port,) = free_ports(1)  # nothing listens there
        dead = f"{HOST}:{dead_port}"
        upstreams = [live[0].url, live[1].url, f"http://{dead}", live[2].url, live[3].url]
        names = [*names_of(live[:2]), dead, *names_of(live[2:])]
        ring = NginxChashRing(names)
        uris = [u for u in targets(400) if ring.get_node(u) == dead][:40]
        assert len(uris) >= 20
        async with shard(tmp_path, upstreams, "--replicas", "2", "--shard-header", "X-Shard") as (port, _):
            responses = await get_all(port, uris)
        for uri, response in zip(uris, responses, strict=True):
            second = ring.get_nodes(uri, 2)[1]
            assert response.status == 200, (uri, response)
            assert response.body.decode() == second, uri
            assert response.header(b"X-Shard") == dead.encode()  # the key's shard, answered by its replica
        for b, name in zip(live, names_of(live), strict=True):
            assert [r.target for r in b.requests] == [u for u in uris if ring.get_nodes(u, 2)[1] == name]


async def test_without_replicas_a_dead_shards_requests_fail_and_go_nowhere_else(tmp_path: Path) -> None:
    async with backends(4) as live:
        (dead_port,) = free_ports(1)
        dead = f"{HOST}:{dead_port}"
        ring = NginxChashRing([*names_of(live), dead])
        uris = [u for u in targets(300) if ring.get_node(u) == dead][:10]
        async with shard(tmp_path, [*(b.url for b in live), f"http://{dead}"]) as (port, _):
            responses = await get_all(port, uris)
        assert [r.status for r in responses] == [502] * len(uris)
        assert [b.requests for b in live] == [[], [], [], []]


async def test_a_post_that_reached_its_shard_is_not_sent_again(tmp_path: Path) -> None:
    async def drop(request: Request) -> Reply:
        return Reply(raw=b"", close=True)  # read the request, then close without a word

    async with backends(4) as live, Backend(drop) as dropper:
        names = [*names_of(live), f"{HOST}:{dropper.port}"]
        ring = NginxChashRing(names)
        uri = next(u for u in targets(300) if ring.get_node(u) == names[-1])
        async with shard(tmp_path, [*(b.url for b in live), dropper.url], "--replicas", "3") as (port, _):
            client = await RawClient.connect(port)
            try:
                await client.send(
                    b"POST %s HTTP/1.1\r\nHost: shard.test\r\nContent-Length: 5\r\n\r\nhello" % uri
                )
                (response,) = await client.read_responses(1, timeout=10)
            finally:
                await client.close()
        assert response.status == 502
        assert [(r.method, r.target, r.body) for r in dropper.requests] == [(b"POST", uri, b"hello")]
        assert [b.requests for b in live] == [[], [], [], []]  # neither replica got a second copy


# -- metrics ------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^distpat_stage_decisions_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def decisions(metrics: str) -> dict[tuple[str, str], float]:
    out = {}
    for line in metrics.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match["labels"]))
            out[labels["stage"], labels["decision"]] = float(match["value"])
    return out


async def test_per_shard_counts_on_metrics(tmp_path: Path) -> None:
    async with backends() as bs:
        names = names_of(bs)
        ring = NginxChashRing(names)
        uris = targets(100)
        async with shard(tmp_path, [b.url for b in bs], admin=True) as (port, admin):
            await get_all(port, uris)
            async with aiohttp.ClientSession() as session, session.get(f"http://{HOST}:{admin}/metrics") as r:
                assert r.status == 200
                text = await r.text()
        counted = decisions(text)
        expected = {("shard", name): float(sum(ring.get_node(u) == name for u in uris)) for name in names}
        assert {k: v for k, v in counted.items() if k[0] == "shard"} == {
            k: v for k, v in expected.items() if v
        }
