"""`distpat proxy` as a real process: bounded memory on huge bodies, SIGTERM, admin, flags."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp

from tests.httpkit import HOST, Backend, RawClient, Reply, Request, exchange
from tests.nutcracker import free_ports

MiB = 1 << 20


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@contextlib.contextmanager
def proxy_process(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "distpat", "proxy", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"distpat proxy exited with {proc.returncode}: {err}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"distpat proxy did not listen on {port} within {timeout}s")


async def test_100_mib_each_way_with_bounded_memory() -> None:
    size = 100 * MiB
    piece = b"x" * (256 * 1024)

    async def handler(request: Request) -> Reply:
        if request.method == b"GET":

            async def body() -> AsyncIterator[bytes]:
                for _ in range(size // len(piece)):
                    yield piece

            return Reply(chunks=body())
        return Reply(body=b"%d" % backend.body_bytes)

    (port,) = free_ports(1)
    async with Backend(handler, keep_bodies=False) as backend:
        with proxy_process("--listen", f"{HOST}:{port}", "--upstream", backend.url) as proc:
            await wait_listening(port, proc)
            baseline = rss_kib(proc.pid)

            client = await RawClient.connect(port)
            try:  # upload, written as fast as the proxy takes it
                await client.send(b"PUT /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // len(piece)):
                    client.writer.write(piece)
                    await client.writer.drain()
                [r] = await client.read_responses(1, timeout=60)
                assert r.status == 200
                assert r.body == b"%d" % size

                # download, read slowly at first so the proxy must hold back the upstream
                await client.send(b"GET /down HTTP/1.1\r\nHost: h\r\n\r\n")
                received = 0
                async with asyncio.timeout(60):
                    head = await client.reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200")
                    await asyncio.sleep(0.5)
                    while received < size:  # chunked: count payload bytes roughly via framing
                        data = await client.reader.read(1 << 20)
                        assert data
                        received += len(data)
                        if data.endswith(b"0\r\n\r\n"):
                            break
            finally:
                await client.close()
            assert received >= size
            peak = rss_kib(proc.pid)
    # Memory bounded: the proxy's peak grew by far less than the 200 MiB that passed.
    assert peak - baseline < 48 * 1024, f"RSS grew from {baseline} KiB to {peak} KiB"


async def test_sigterm_finishes_requests_in_flight_and_exits() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(body=b"finished", delay=0.6)

    (port,) = free_ports(1)
    async with Backend(handler) as backend:
        with proxy_process("--listen", f"{HOST}:{port}", "--upstream", backend.url) as proc:
            await wait_listening(port, proc)
            pending = [
                asyncio.ensure_future(exchange(port, b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i, timeout=10))
                for i in range(8)
            ]
            await asyncio.sleep(0.2)  # all eight are at the upstream now
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*pending)
            assert [r.status for [r] in results] == [200] * 8
            assert [r.body for [r] in results] == [b"finished"] * 8
            assert await asyncio.to_thread(proc.wait, 10) == 0


async def test_admin_probes_follow_upstream_health() -> None:
    port, admin = free_ports(2)
    async with Backend() as backend:
        url = backend.url
        with proxy_process(
            "--listen",
            f"{HOST}:{port}",
            "--upstream",
            url,
            "--admin",
            f"{HOST}:{admin}",
            "--max-fails",
            "1",
            "--fail-timeout",
            "30",
        ) as proc:
            await wait_listening(port, proc)
            await wait_listening(admin, proc)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{HOST}:{admin}/readyz") as r:
                    assert r.status == 200
                [r1] = await exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                assert r1.status == 200
                await backend.__aexit__(None, None, None)  # the only upstream goes away
                [r2] = await exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                assert r2.status == 502
                async with session.get(f"http://{HOST}:{admin}/readyz") as r:
                    assert r.status == 503
                    assert "no healthy upstream" in await r.text()
                async with session.get(f"http://{HOST}:{admin}/healthz") as r:
                    assert r.status == 200
                async with session.get(f"http://{HOST}:{admin}/metrics") as r:
                    text = await r.text()
                assert 'distpat_http_requests_total{status="502"' in text
                assert "distpat_upstream_healthy" in text


async def test_flags_environment_and_toml_configure_the_same_options(tmp_path: Path) -> None:
    port1, port2 = free_ports(2)
    async with Backend() as backend:
        toml = tmp_path / "proxy.toml"
        toml.write_text(f'listen = "{HOST}:{port2}"\nupstream = ["{backend.url}"]\nmax_header_bytes = 2048\n')
        with (
            proxy_process(
                env={
                    "DISTPAT_LISTEN": f"{HOST}:{port1}",
                    "DISTPAT_UPSTREAM": backend.url,
                    "DISTPAT_MAX_HEADER_BYTES": "2048",
                }
            ) as a,
            proxy_process("--config", str(toml)) as b,
        ):
            for port, proc in ((port1, a), (port2, b)):
                await wait_listening(port, proc)
                [ok] = await exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                assert ok.status == 200
                [big] = await exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 3000 + b"\r\n\r\n")
                assert big.status == 431


def test_bad_configuration_is_one_line_and_status_2(tmp_path: Path) -> None:
    cases = [
        ([], "no listen address"),
        (["--listen", "127.0.0.1:1"], "no upstream"),
        (["--listen", "nowhere", "--upstream", "http://127.0.0.1:1"], "--listen must be HOST:PORT"),
        (["--listen", "127.0.0.1:1", "--upstream", "ftp://x:1"], "only http:// upstreams"),
        (
            ["--listen", "127.0.0.1:1", "--upstream", "http://127.0.0.1:1", "--workers", "0"],
            "--workers must be at least 1",
        ),
        (
            ["--listen", "127.0.0.1:1", "--upstream", "http://127.0.0.1:1", "--header-timeout", "-3"],
            "positive number",
        ),
        (["--config", str(tmp_path / "missing.toml")], "cannot read"),
    ]
    for args, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "distpat", "proxy", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if not k.startswith("DISTPAT_")},
        )
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert done.stderr.startswith("distpat: error: ")


async def test_workers_share_the_port() -> None:
    (port,) = free_ports(1)
    async with Backend() as backend:
        with proxy_process("--listen", f"{HOST}:{port}", "--upstream", backend.url, "--workers", "2") as proc:
            await wait_listening(port, proc)
            results = await asyncio.gather(
                *(
                    exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                    for _ in range(20)
                )
            )
            assert [r.status for [r] in results] == [200] * 20
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            assert len(children) == 2
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 15) == 0


async def _scrape(admin: int) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://{HOST}:{admin}/metrics") as r:
        return r.status, await r.text()


async def test_workers_metrics_and_readiness_add_up_every_worker() -> None:
    from tests.test_admin import sample, samples_of

    port, admin = free_ports(2)
    count = 40
    async with Backend() as backend:
        args = ("--listen", f"{HOST}:{port}", "--upstream", backend.url, "--workers", "2")
        with proxy_process(*args, "--admin", f"{HOST}:{admin}") as proc:
            await wait_listening(port, proc)
            await wait_listening(admin, proc)
            results = await asyncio.gather(
                *(
                    exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                    for _ in range(count)
                )
            )
            assert [r.status for [r] in results] == [200] * count
            status, text = await _scrape(admin)
            assert status == 200
            s = samples_of(text)
            name = backend.url.removeprefix("http://")
            assert sample(s, "distpat_http_requests_total", status="200", upstream=name) == count
            assert sample(s, "distpat_connections_total") == count + 1  # and wait_listening's
            assert sample(s, "distpat_upstream_response_seconds_count", upstream=name) == count
            assert sample(s, "distpat_upstream_response_seconds_bucket", upstream=name, le="+Inf") == count
            assert sample(s, "distpat_workers") == 2
            assert sample(s, "distpat_workers_answering") == 2
            assert sample(s, "distpat_upstream_healthy", upstream=name) == 1
            # which workers served them is the kernel's choice; each answers for its own
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{HOST}:{admin}/readyz") as r:
                    assert (r.status, await r.text()) == (200, "ready\n")
                # A dead worker drops out of the sum; it does not hang the scrape.
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                os.kill(int(children[0]), signal.SIGKILL)
                await asyncio.sleep(0.2)
                async with asyncio.timeout(10), session.get(f"http://{HOST}:{admin}/metrics") as r:
                    assert r.status == 200
                    assert sample(samples_of(await r.text()), "distpat_workers_answering") == 1
                async with session.get(f"http://{HOST}:{admin}/readyz") as r:
                    assert r.status == 200
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 15) != 0  # the killed worker's status


async def test_sub_millisecond_requests_land_in_sub_millisecond_buckets_under_uvloop() -> None:
    import json

    from tests.test_admin import sample, samples_of

    port, admin = free_ports(2)
    async with Backend() as backend:
        args = ("--listen", f"{HOST}:{port}", "--upstream", backend.url, "--access-log", "json")
        with proxy_process(*args, "--admin", f"{HOST}:{admin}", "--loop", "uvloop") as proc:
            await wait_listening(port, proc)
            client = await RawClient.connect(port)
            try:
                for _ in range(50):  # loopback, one pooled upstream connection: well under 1 ms each
                    await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                    [r] = await client.read_responses(1)
                    assert r.status == 200
            finally:
                await client.close()
            _, text = await _scrape(admin)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 15) == 0
            assert proc.stderr is not None
            log = proc.stderr.read().decode()
    s = samples_of(text)
    name = backend.url.removeprefix("http://")
    assert sample(s, "distpat_upstream_response_seconds_count", upstream=name) == 50
    # uvloop's clock moves in whole milliseconds: with it, no response took less than 1 ms
    assert sample(s, "distpat_upstream_response_seconds_bucket", upstream=name, le="0.0005") > 0
    info = [labels for (n, labels), _ in s.items() if n == "distpat_build_info"]
    assert dict(info[0])["loop"] == "uvloop"
    times = [json.loads(line)["request_time"] for line in log.splitlines() if line.startswith("{")]
    assert len(times) == 50
    assert any(round(t * 1000) != t * 1000 for t in times), times  # not whole milliseconds


def test_workers_with_an_admin_address_in_use_is_one_line_and_status_2() -> None:
    import socket

    port, admin = free_ports(2)
    with socket.create_server((HOST, admin)):
        argv = ["--listen", f"{HOST}:{port}", "--upstream", "http://127.0.0.1:9", "--workers", "2"]
        done = subprocess.run(
            [sys.executable, "-m", "distpat", "proxy", *argv, "--admin", f"{HOST}:{admin}"],
            capture_output=True,
            text=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if not k.startswith("DISTPAT_")},
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("distpat: error: cannot listen on"), done.stderr
    assert "(admin)" in done.stderr


async def test_workers_exit_0_when_sigterm_reaches_the_whole_process_group() -> None:
    """systemd (KillMode=control-group) and a terminal's ^C signal every process of the group: each
    worker then gets SIGTERM twice, from the group and from the parent, and must still drain and exit
    0, whenever the second one lands. Several rounds, since the second signal's moment varies."""
    (port,) = free_ports(1)
    async with Backend() as backend:
        for _ in range(5):
            args = ("--listen", f"{HOST}:{port}", "--upstream", backend.url, "--workers", "2")
            with proxy_process(*args) as proc:
                await wait_listening(port, proc)
                [reply] = await exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                assert reply.status == 200
                os.killpg(proc.pid, signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 15)
                err = proc.stderr.read().decode() if proc.stderr else ""
                assert code == 0, err
                assert "exited with" not in err, err


def group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


async def first_child(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Wait until ``proc`` has forked its first worker."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for _ in range(int(timeout / 0.005)):
        if proc.poll() is not None or children.read_text().split():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no worker was forked in time")


async def test_signals_during_workers_start_up_leave_no_orphan_and_exit_0() -> None:
    """SIGHUP or SIGTERM from the first fork on, while the parent and the workers install their
    handlers: the parent neither dies of it nor leaves a worker serving; it exits 0 and takes the
    whole group with it. Several moments, since where each signal lands varies."""
    (port,) = free_ports(1)
    argv = ("--listen", f"{HOST}:{port}", "--upstream", "http://127.0.0.1:9", "--workers", "2")
    for delay in (0.0, 0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.35, 0.6):
        with proxy_process(*argv) as proc:
            await first_child(proc)
            await asyncio.sleep(delay)
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(delay / 2)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)
            err = proc.stderr.read().decode() if proc.stderr else ""
            left = group_alive(proc.pid)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            assert code == 0, (delay, code, err)
            assert left == [], (delay, err)


async def test_workers_drain_and_exit_when_their_parent_is_killed() -> None:
    (port,) = free_ports(1)
    async with Backend() as backend:
        argv = ("--listen", f"{HOST}:{port}", "--upstream", backend.url, "--workers", "2")
        with proxy_process(*argv) as proc:
            await wait_listening(port, proc)
            workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            assert len(workers) == 2
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 15)
            for _ in range(100):  # the workers look every second
                left = group_alive(proc.pid)
                if not left:
                    break
                await asyncio.sleep(0.1)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            assert left == []
