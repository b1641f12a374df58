"""`distpat ratelimit --redis` as real processes beside a real redis-server on 127.0.0.1.

* Four workers share one bucket through Redis: exactly the burst and one pass for a key, however the
  kernel spreads the connections; with each worker's own tables they admit more.
* Redis stopped: every request is answered at once (within a client timeout) as ``--on-redis-error``
  says; started again on the same port (with no scripts, so NOSCRIPT then EVAL), the limits are shared
  again, and the process's log tells of the switch and of the return once each.
* ``--trusted-proxy``: a configured proxy that is not the peer makes a spoofed X-Forwarded-For
  count for nothing; with the peer trusted, the right-most untrusted address is the key.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.httpkit import Backend, Response, exchange
from tests.nutcracker import free_ports
from tests.rediskit import HOST, RedisServer, commands_run
from tests.tlskit import Sidecar, running_distpat

#: Seconds one client request may take: none may hang while Redis is down.
CLIENT_TIMEOUT = 5.0
#: Attempts (about 0.1 s apart) a restarted Redis has to be used again (the client waits 1 s to retry).
RECONNECT_TRIES = 60


async def get(port: int, *fields: bytes) -> Response:
    """One GET on a fresh connection (so a server's workers share them), bounded by CLIENT_TIMEOUT."""
    head = b"".join(f + b"\r\n" for f in fields)
    (response,) = await exchange(
        port, b"GET /x HTTP/1.1\r\nHost: h\r\n" + head + b"Connection: close\r\n\r\n", timeout=CLIENT_TIMEOUT
    )
    return response


async def statuses(port: int, key: bytes, count: int) -> list[int]:
    return [(await get(port, b"X-Key: " + key)).status for _ in range(count)]


async def all_workers_listen(run: Sidecar, workers: int) -> None:
    """Wait (bounded) until every worker has logged that it listens: the kernel then spreads
    fresh connections over all of them (SO_REUSEPORT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while run.log().count("listening on") < workers:
        assert loop.time() < deadline, run.log()
        await asyncio.sleep(0.05)


def limiter_argv(port: int, upstream: str, *more: str) -> list[str]:
    return ["--listen", f"{HOST}:{port}", "--upstream", upstream, "--key", "header:X-Key", *more]


# -- (a) four workers, one bucket --------------------------------------------------------------------


async def test_four_workers_share_one_bucket_through_redis(tmp_path: Path) -> None:
    shared_port, local_port, redis_port = free_ports(3)
    redis_server = RedisServer(redis_port, tmp_path / "redis")
    limit = ("--rate", "1r/m", "--burst", "9", "--nodelay", "--workers", "4")
    async with Backend() as backend:
        await redis_server.start()
        try:
            argv = limiter_argv(shared_port, backend.url, *limit, "--redis", f"redis://{HOST}:{redis_port}")
            async with running_distpat("ratelimit", tmp_path, shared_port, argv) as run:
                await all_workers_listen(run, 4)
                shared = Counter(await statuses(shared_port, b"one", 60))
            assert shared == {200: 10, 429: 50}  # burst 9 and the first: 10, whichever worker answered
            async with redis_server.client() as direct:
                assert await direct.exists("distpat:rl:per-header:one") == 1
        finally:
            await redis_server.stop()
        assert len(backend.requests) == 10
        argv = limiter_argv(local_port, backend.url, *limit)
        async with running_distpat("ratelimit", tmp_path, local_port, argv) as run:
            await all_workers_listen(run, 4)
            local = Counter(await statuses(local_port, b"one", 60))
    assert set(local) <= {200, 429}
    assert local[200] + local[429] == 60
    # Each worker has its own bucket: up to 4 x 10 (40 in every run seen). With all four listening,
    # 60 fresh connections going to one worker only (10) is a chance of about 4 ** -59.
    assert 10 < local[200] <= 40


# -- (b) Redis stopped and started again -----------------------------------------------------------------

DOWN = "Redis failed ("
UP = "Redis answers again; limits are shared again"


async def back_to_shared(run: Sidecar, port: int) -> None:
    """Requests (fresh keys) until the process has used the restarted Redis (bounded)."""
    for attempt in range(RECONNECT_TRIES):
        await get(port, b"X-Key: probe-%d" % attempt)
        if UP in run.log():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the restarted Redis was not used again:\n{run.log()}")


@pytest.mark.parametrize(
    ("mode", "while_down"),
    [
        ("open", [200, 200, 200, 200, 200]),
        ("closed", [503, 503, 503, 503, 503]),
        ("local", [200, 200, 200, 429, 429]),  # the process's own (empty) table: the burst, then 429
    ],
)
async def test_redis_stopped_then_started_again(tmp_path: Path, mode: str, while_down: list[int]) -> None:
    port, redis_port = free_ports(2)
    redis_server = RedisServer(redis_port, tmp_path / "redis")
    async with Backend() as backend:
        await redis_server.start()
        try:
            argv = limiter_argv(
                port,
                backend.url,
                *("--rate", "1r/m", "--burst", "2", "--nodelay"),
                *("--redis", f"redis://{HOST}:{redis_port}", "--on-redis-error", mode),
            )
            async with running_distpat("ratelimit", tmp_path, port, argv) as run:
                assert await statuses(port, b"before", 4) == [200, 200, 200, 429]  # shared: in Redis
                async with redis_server.client() as direct:
                    assert await direct.exists("distpat:rl:per-header:before") == 1

                await redis_server.stop()
                down = await statuses(port, b"down", 5)
                assert down == while_down
                if mode == "closed":
                    refused = await get(port, b"X-Key: down")
                    assert (refused.status, refused.header(b"Retry-After")) == (503, b"1")
                if mode == "open":
                    admitted = await get(port, b"X-Key: down")
                    assert admitted.header(b"RateLimit-Policy") == b'"per-header";q=3;w=188'
                    assert admitted.header(b"RateLimit") is None
                await run.wait_for_log(DOWN)

                await redis_server.start()  # the same port, an empty server: no keys, no scripts
                await back_to_shared(run, port)
                assert await statuses(port, b"after", 4) == [200, 200, 200, 429]
                async with redis_server.client() as direct:
                    assert await direct.exists("distpat:rl:per-header:after") == 1
                assert await commands_run(redis_server, "eval") >= 1  # reloaded after NOSCRIPT
                log = run.log()
        finally:
            await redis_server.stop()
    assert log.count(DOWN) == 1, log
    assert log.count(UP) == 1, log
    told = {"open": "admitting every request", "closed": "refusing every request with 503"}
    assert told.get(mode, "judging by this process's own tables") in log


async def test_a_stalled_redis_is_a_failure_after_the_call_timeout_not_a_hang(tmp_path: Path) -> None:
    """Redis stopped with SIGSTOP: its connection stays open and nothing answers. Each request is
    answered within the client's timeout (the stage waits REDIS_TIMEOUT, 0.5 s), here 503."""
    port, redis_port = free_ports(2)
    redis_server = RedisServer(redis_port, tmp_path / "redis")
    async with Backend() as backend:
        await redis_server.start()
        process = redis_server.process
        assert process is not None
        try:
            argv = limiter_argv(
                port,
                backend.url,
                *("--rate", "1r/m", "--burst", "2", "--nodelay"),
                *("--redis", f"redis://{HOST}:{redis_port}", "--on-redis-error", "closed"),
            )
            async with running_distpat("ratelimit", tmp_path, port, argv) as run:
                assert await statuses(port, b"before", 4) == [200, 200, 200, 429]
                process.send_signal(signal.SIGSTOP)
                assert await statuses(port, b"stalled", 3) == [503, 503, 503]
                await run.wait_for_log(DOWN)
                process.send_signal(signal.SIGCONT)
                await back_to_shared(run, port)
                assert await statuses(port, b"after", 4) == [200, 200, 200, 429]
                log = run.log()
        finally:
            process.send_signal(signal.SIGCONT)
            await redis_server.stop()
    assert log.count(DOWN) == 1, log
    assert log.count(UP) == 1, log
    assert "Redis failed (unavailable: " in log


# -- (c) X-Forwarded-For from a peer that is not a trusted proxy -------------------------------------------


async def test_trusted_proxies_that_are_not_the_peer_and_the_right_most_untrusted_address(
    tmp_path: Path,
) -> None:
    untrusting, trusting = free_ports(2)
    async with Backend() as backend:
        base = ["--upstream", backend.url, "--rate", "1r/m"]
        argv = ["--listen", f"{HOST}:{untrusting}", *base, "--trusted-proxy", "10.0.0.0/8"]
        async with running_distpat("ratelimit", tmp_path, untrusting, argv):
            spoofed = [
                (await get(untrusting, b"X-Forwarded-For: " + address)).status
                for address in (b"198.51.100.1", b"198.51.100.2", b"10.0.0.1")
            ]
        assert spoofed == [200, 429, 429]  # 127.0.0.1 is no trusted proxy: one bucket, its own
        argv = ["--listen", f"{HOST}:{trusting}", *base, "--trusted-proxy", "127.0.0.1"]
        async with running_distpat("ratelimit", tmp_path, trusting, argv):
            chains = [
                (await get(trusting, b"X-Forwarded-For: " + chain)).status
                for chain in (
                    b"198.51.100.1, 203.0.113.7",  # the key: 203.0.113.7
                    b"198.51.100.9, 203.0.113.7",  # the same right-most untrusted address
                    b"203.0.113.7, 198.51.100.1",  # another one: 198.51.100.1
                )
            ]
        assert chains == [200, 429, 200]
