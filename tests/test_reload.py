"""SIGHUP reloads `distpat proxy --config FILE` without dropping connections; a broken file is refused."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from distpat.errors import ConfigError
from tests.httpkit import HOST, Backend, RawClient, Reply, Request, exchange
from tests.nutcracker import free_ports
from tests.test_admin import sample, samples_of
from tests.tlskit import Sidecar, running_distpat


def named(name: bytes) -> Backend:
    async def handler(request: Request) -> Reply:
        return Reply(body=name)

    return Backend(handler)


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend]]:
    async with named(b"A") as a, named(b"B") as b:
        yield a, b


def write_config(path: Path, port: int, admin: int, *upstreams: str, extra: str = "") -> None:
    listed = ", ".join(f'"{u}"' for u in upstreams)
    path.write_text(
        f'listen = "{HOST}:{port}"\nadmin = "{HOST}:{admin}"\nupstream = [{listed}]\n'
        f"shutdown_timeout = 2\n{extra}"
    )


async def get(client: RawClient, path: str = "/") -> bytes:
    await client.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
    [r] = await client.read_responses(1)
    assert r.status == 200
    return r.body


async def reload(proxy: Sidecar, expect: str, *, workers: int = 1) -> None:
    mark = len(proxy.log())
    proxy.process.send_signal(signal.SIGHUP)
    tail = await proxy.wait_for_log(expect, after=mark)
    for _ in range(50):  # each worker logs its own line
        if tail.count(expect) >= workers:
            return
        await asyncio.sleep(0.1)
        tail = proxy.log()[mark:]
    raise AssertionError(f"{workers} workers did not log {expect!r}:\n{tail}")


async def metrics(admin: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as session, session.get(f"http://{HOST}:{admin}/metrics") as r:
        return samples_of(await r.text())


async def test_sighup_switches_upstreams_on_an_open_connection_and_refuses_a_broken_file(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    a, b = backends
    port, admin, other = free_ports(3)
    config = tmp_path / "proxy.toml"
    write_config(config, port, admin, a.url)
    async with running_distpat("proxy", tmp_path, port, ["--config", str(config)], also=(admin,)) as proxy:
        client = await RawClient.connect(port)
        try:
            assert await get(client) == b"A"
            write_config(config, port, admin, b.url, extra="max_body_bytes = 10\n")
            await reload(proxy, "configuration reloaded")
            assert await get(client) == b"B"  # the same connection, the new upstream
            # the new limits apply to the next request
            await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
            [big] = await client.read_responses(1)
            assert big.status == 413
        finally:
            await client.close()

        client = await RawClient.connect(port)
        try:
            assert await get(client) == b"B"
            for broken in ("upstream = [", 'upstream = ["ftp://nowhere"]', f'listen = "{HOST}:{other}"'):
                config.write_text(config.read_text() + "\n" + broken + "\n")
                if broken.startswith("listen"):  # a valid file, but listening elsewhere needs a restart
                    write_config(config, other, admin, a.url)
                await reload(proxy, "configuration reload refused")
                assert await get(client) == b"B"  # the old configuration stays
                write_config(config, port, admin, b.url)
        finally:
            await client.close()
        s = await metrics(admin)
        log = proxy.log()
    assert sample(s, "distpat_config_reloads_total", result="ok") == 1
    assert sample(s, "distpat_config_reloads_total", result="refused") == 3
    assert "a restart is needed" in log
    assert ("distpat_upstream_healthy", frozenset({("upstream", a.url.removeprefix("http://"))})) not in s
    assert len(a.requests) == 1


async def test_sighup_reaches_every_worker(tmp_path: Path, backends: tuple[Backend, Backend]) -> None:
    a, b = backends
    port, admin = free_ports(2)
    config = tmp_path / "proxy.toml"
    write_config(config, port, admin, a.url, extra="workers = 2\n")
    async with running_distpat("proxy", tmp_path, port, ["--config", str(config)], also=(admin,)) as proxy:
        # Both workers serving (each logs once its signal handlers are in place): a SIGHUP reaching a
        # worker still starting is not acted on (docs/proxy.md says so), which this test is not about.
        for _ in range(100):
            if proxy.log().count("listening on") >= 2:
                break
            await asyncio.sleep(0.05)
        write_config(config, port, admin, b.url, extra="workers = 2\n")
        await reload(proxy, "configuration reloaded", workers=2)
        answers = await asyncio.gather(
            *(exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n") for _ in range(20))
        )
        s = await metrics(admin)
    assert [r.body for [r] in answers] == [b"B"] * 20
    assert sample(s, "distpat_config_reloads_total", result="ok") == 2  # one per worker


async def test_reconfigure_keeps_the_pool_of_a_kept_upstream_and_closes_a_removed_ones(
    backends: tuple[Backend, Backend],
) -> None:
    from distpat.net.proxy import ProxyConfig, ProxyServer

    a, b = backends
    first = ProxyConfig(listen=(HOST, 0), upstreams=(a.url, b.url))
    server = ProxyServer(first)
    await server.start()
    try:
        client = await RawClient.connect(server.port)
        try:
            assert {await get(client) for _ in range(4)} == {b"A", b"B"}
            server.reconfigure(ProxyConfig(listen=(HOST, 0), upstreams=(a.url,)))
            assert {await get(client) for _ in range(4)} == {b"A"}
        finally:
            await client.close()
        await asyncio.sleep(0.2)
        assert a.connections == 1  # its pooled connection was reused across the reload
        assert b.connections == 1
        assert not b.transports  # the removed upstream's idle connection was closed
        with pytest.raises(ConfigError, match="listen changed"):
            server.reconfigure(ProxyConfig(listen=(HOST, 1), upstreams=(a.url,)))
        assert server.config.upstreams == (a.url,)
    finally:
        await server.shutdown(1)


async def test_a_refused_reload_changes_nothing_not_even_logging(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    a, _ = backends
    port, admin, other = free_ports(3)
    config = tmp_path / "proxy.toml"
    write_config(config, port, admin, a.url, extra='log_level = "info"\n')
    async with running_distpat("proxy", tmp_path, port, ["--config", str(config)], also=(admin,)) as proxy:
        write_config(config, other, admin, a.url, extra='log_level = "error"\n')  # listen: restart-only
        await reload(proxy, "configuration reload refused")
        mark = len(proxy.log())
    assert "signal received: draining" in proxy.log()[mark:]  # info lines are still written


async def test_a_reload_reaches_the_request_rules_of_an_open_keep_alive_connection(tmp_path: Path) -> None:
    async with Backend() as backend:
        port, admin = free_ports(2)
        config = tmp_path / "proxy.toml"
        write_config(config, port, admin, backend.url, extra="underscores_in_headers = true\n")
        async with running_distpat(
            "proxy", tmp_path, port, ["--config", str(config)], also=(admin,)
        ) as proxy:
            client = await RawClient.connect(port)
            try:
                forged = b"GET / HTTP/1.1\r\nHost: h\r\nX_Client_Cert_Subject: forged\r\n\r\n"
                await client.send(forged)
                [first] = await client.read_responses(1)
                write_config(config, port, admin, backend.url, extra="underscores_in_headers = false\n")
                await reload(proxy, "configuration reloaded")
                await client.send(forged)  # the same connection
                [second] = await client.read_responses(1)
            finally:
                await client.close()
    assert first.status == second.status == 200
    assert [r.header(b"X_Client_Cert_Subject") for r in backend.requests] == [b"forged", None]
