"""distpat.aiohttp.ratelimit_middleware: distpat ratelimit's limiter in an aiohttp application,
served by aiohttp's TestServer on 127.0.0.1 (shared mode against a real redis-server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import distpat.aiohttp
from distpat.aiohttp import RateLimitMiddleware, ratelimit_middleware
from distpat.cli import build_parser
from distpat.cli.flags import flag_values
from distpat.config.pipeline import load_pipeline
from distpat.config.ratelimit import RATELIMIT_OPTIONS, build_ratelimit_config
from distpat.errors import ConfigError
from tests.nutcracker import free_ports
from tests.rediskit import RedisServer
from tests.test_aiohttp_driver import python_blocks

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
Client = TestClient[web.Request, web.Application]


class App:
    """Handlers that count their calls: ``/`` answers, ``/wait`` waits for :attr:`release`,
    ``/boom`` raises, ``/stream`` prepares its response itself."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.waiting = 0

    async def ok(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        return web.Response(text="ok")

    async def wait(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.waiting += 1
        await asyncio.wait_for(self.release.wait(), 10)
        return web.Response(text="waited")

    async def boom(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        raise RuntimeError("the handler failed")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"streamed")
        await response.write_eof()
        return response


def application(limiter: RateLimitMiddleware, handlers: App) -> web.Application:
    app = web.Application(middlewares=[limiter])
    app.on_response_prepare.append(limiter.on_response_prepare)
    app.cleanup_ctx.append(limiter.cleanup_ctx)
    app.router.add_get("/", handlers.ok)
    app.router.add_get("/wait", handlers.wait)
    app.router.add_get("/boom", handlers.boom)
    app.router.add_get("/stream", handlers.stream)
    return app


@contextlib.asynccontextmanager
async def serve(limiter: RateLimitMiddleware) -> AsyncIterator[tuple[Client, App]]:
    handlers = App()
    async with TestClient(TestServer(application(limiter, handlers), host=HOST)) as client:
        yield client, handlers


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- deciding -------------------------------------------------------------------------------------


async def test_the_burst_passes_then_429_with_retry_after_and_the_handler_never_runs() -> None:
    limiter = ratelimit_middleware(rate="1r/m", burst=2, nodelay=True)
    async with serve(limiter) as (client, app):
        answers = [await client.get("/") for _ in range(4)]
        statuses = [r.status for r in answers]
        bodies = [await r.text() for r in answers]
    assert statuses == [200, 200, 200, 429]
    assert bodies[:3] == ["ok"] * 3
    assert app.calls == 3  # the refused request never reached the handler
    for remaining, response in zip((2, 1, 0), answers, strict=False):
        assert response.headers["RateLimit-Policy"] == '"per-ip";q=3;w=188'  # as distpat ratelimit's
        assert response.headers["RateLimit"].startswith(f'"per-ip";r={remaining};')
        assert "Retry-After" not in response.headers
    refused = answers[3]
    assert refused.headers["Retry-After"] == "63"
    assert refused.headers["RateLimit"] == '"per-ip";r=0;t=188'
    assert "rate limited" in bodies[3]
    assert limiter.stage.counts == {("per-ip", "admit"): 3, ("per-ip", "reject"): 1}


async def test_a_streamed_response_gets_the_fields() -> None:
    limiter = ratelimit_middleware(rate="1r/m", burst=1, nodelay=True, limit_name="site")
    async with serve(limiter) as (client, _):
        streamed = await client.get("/stream")
        assert (streamed.status, await streamed.text()) == (200, "streamed")
        assert (
            streamed.headers["RateLimit-Policy"] == '"site";q=2;w=125'
        )  # 1r/m is 16/1000 r/s, as nginx keeps it
        assert streamed.headers["RateLimit"].startswith('"site";r=1;')


async def test_a_request_past_the_delay_threshold_is_held_then_answered() -> None:
    limiter = ratelimit_middleware(rate="20r/s", burst=1)  # the second at once: held 1/20 s
    async with serve(limiter) as (client, app):
        first, second = [await client.get("/") for _ in range(2)]
        assert (first.status, second.status) == (200, 200)
        assert await second.text() == "ok"
    assert app.calls == 2
    assert limiter.stage.counts == {("per-ip", "admit"): 1, ("per-ip", "delay"): 1}
    assert second.headers["RateLimit-Policy"] == '"per-ip";q=2;w=1'


async def test_concurrency_permits_are_given_back_when_the_handler_raises() -> None:
    limiter = ratelimit_middleware(rate="1000r/s", burst=100, nodelay=True, concurrency=1)
    async with serve(limiter) as (client, app):
        pending = asyncio.ensure_future(client.get("/wait"))
        await until(lambda: app.waiting == 1, "the first request in the handler")
        crowded = await client.get("/")
        assert crowded.status == 503  # the key's one permit is taken
        app.release.set()
        assert (await pending).status == 200
        failed = await client.get("/boom")
        assert failed.status == 500
        after = await client.get("/")
        assert (after.status, await after.text()) == (200, "ok")  # the raising handler's permit came back
    assert app.calls == 3
    counts = limiter.stage.counts
    assert counts[("per-ip", "concurrency")] == 1


async def test_dry_run_refuses_nothing() -> None:
    limiter = ratelimit_middleware(rate="1r/m", dry_run=True)
    async with serve(limiter) as (client, app):
        statuses = [(await client.get("/")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert app.calls == 3
    assert limiter.stage.counts == {("per-ip", "admit"): 1, ("per-ip", "dry_run_reject"): 2}


# -- options ---------------------------------------------------------------------------------------


def command_error(*argv: str) -> str:
    args = build_parser().parse_args(
        ["ratelimit", "--listen", f"{HOST}:1", "--upstream", f"http://{HOST}:1", *argv]
    )
    with pytest.raises(ConfigError) as caught:
        build_ratelimit_config(flag_values(args, RATELIMIT_OPTIONS), environ={})
    message = str(caught.value)
    for option in RATELIMIT_OPTIONS:  # the flag's spelling -> the keyword's
        message = message.replace("--" + option.name.replace("_", "-"), option.name)
    return message


@pytest.mark.parametrize(
    ("options", "argv"),
    [
        ({}, []),
        ({"rate": "10r/h"}, ["--rate", "10r/h"]),
        ({"rate": "1r/s", "burst": 2, "delay": 5}, ["--rate", "1r/s", "--burst", "2", "--delay", "5"]),
        (
            {"rate": "1r/s", "burst": 2, "delay": 1, "nodelay": True},
            ["--rate", "1r/s", "--burst", "2", "--delay", "1", "--nodelay"],
        ),
        ({"rate": "1r/s", "status": 200}, ["--rate", "1r/s", "--status", "200"]),
        ({"rate": "1r/s", "key": "body:x"}, ["--rate", "1r/s", "--key", "body:x"]),
        ({"rate": "1r/s", "limit_name": 'a"b'}, ["--rate", "1r/s", "--limit-name", 'a"b']),
        (
            {"rate": "1r/s", "trusted_proxy": ["10.0.0.0/33"]},
            ["--rate", "1r/s", "--trusted-proxy", "10.0.0.0/33"],
        ),
        ({"rate": "1r/s", "burst": -1}, ["--rate", "1r/s", "--burst", "-1"]),
        ({"rate": "1r/s", "on_redis_error": "retry"}, ["--rate", "1r/s", "--on-redis-error", "retry"]),
    ],
)
def test_a_bad_option_is_refused_with_the_command_s_message(options: dict[str, Any], argv: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        ratelimit_middleware(**options)
    assert str(caught.value) == command_error(*argv)


def test_a_bad_limits_entry_is_refused_as_the_pipeline_file_refuses_it(tmp_path: Path) -> None:
    entry = '{ name = "a", rate = "1r/s", burst = 1, delay = 3 }'
    path = tmp_path / "pipeline.toml"
    path.write_text(f'[[stage]]\nkind = "ratelimit"\nlimits = [{entry}]\n')
    with pytest.raises(ConfigError) as from_file:
        load_pipeline(str(path))
    with pytest.raises(ConfigError) as caught:
        ratelimit_middleware(limits=[{"name": "a", "rate": "1r/s", "burst": 1, "delay": 3}])
    assert (
        str(caught.value) == "limits[0].delay 3 exceeds limits[0].burst 1: "
        "at most the whole burst passes at once (limits[0].nodelay)"
    )
    assert str(caught.value) in str(from_file.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 10}, "rate must be a string, not 10"),
        ({"rate": "1r/s", "burst": "3"}, "burst must be a whole number, not '3'"),
        ({"rate": "1r/s", "nodelay": "yes"}, "nodelay must be true or false, not 'yes'"),
        ({"rate": "1r/s", "max_keys": 0}, "max_keys must be at least 1, not 0"),
        (
            {"rate": "1r/s", "redis_url": "http://x"},
            "redis_url 'http://x': give redis://[:password@]host[:port][/db]",
        ),
        (
            {"rate": "1r/s", "limits": [{"rate": "1r/s"}]},
            "give limits or one limit's options, not both (limits and rate)",
        ),
        ({"limits": []}, "limits needs a list of limits"),
        (
            {"limits": [{"rate": "1r/s", "rat": 1}]},
            "limits[0].rat: unknown key; a limit takes rate, burst",
        ),
        ({"limits": [{"rate": "1r/s"}, {"rate": "2r/s"}]}, "two limits are named 'per-ip'"),
    ],
)
def test_keyword_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        ratelimit_middleware(**options)


def test_what_it_makes() -> None:
    limiter = ratelimit_middleware(
        limits=[
            {"name": "a", "rate": "10r/s", "burst": 5, "nodelay": True},
            {"name": "b", "rate": "1r/m", "key": "header:X-Key"},
        ],
        trusted_proxy="10.0.0.0/8",
        max_keys=10,
    )
    assert isinstance(limiter, distpat.aiohttp.PipelineMiddleware)
    stage = limiter.stage
    assert [(r.limit.name, r.limit.burst, r.limit.delay) for r in stage.rules] == [("a", 5, 5), ("b", 0, 0)]
    assert stage.name == "ratelimit"
    assert stage.notify == logging.getLogger("distpat.ratelimit").warning
    assert "RateLimitMiddleware" in repr(limiter)


# -- shared mode -----------------------------------------------------------------------------------


async def test_two_applications_sharing_one_redis_admit_one_limit_s_worth(tmp_path: Path) -> None:
    server = RedisServer(free_ports(1)[0], tmp_path / "redis")
    await server.start()
    try:
        url = f"redis://{HOST}:{server.port}/0"
        one = ratelimit_middleware(rate="1r/m", burst=2, nodelay=True, redis_url=url)
        two = ratelimit_middleware(rate="1r/m", burst=2, nodelay=True, redis_url=url)
        async with serve(one) as (first, app_one), serve(two) as (second, app_two):
            statuses = []
            for client in (first, second, first, second, first, second):
                statuses.append((await client.get("/")).status)
        assert statuses == [200, 200, 200, 429, 429, 429]
        assert app_one.calls + app_two.calls == 3
        assert one.stage.redis_events == two.stage.redis_events == {}
        admitted = one.stage.counts.get(("per-ip", "admit"), 0) + two.stage.counts.get(("per-ip", "admit"), 0)
        assert admitted == 3
    finally:
        await server.stop()


async def test_a_redis_that_does_not_answer_is_logged_and_judged_locally(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (dead,) = free_ports(1)
    limiter = ratelimit_middleware(rate="1r/m", redis_url=f"redis://{HOST}:{dead}/0")
    with caplog.at_level(logging.WARNING, logger="distpat.ratelimit"):
        async with serve(limiter) as (client, _):
            statuses = [(await client.get("/")).status for _ in range(2)]
    assert statuses == [200, 429]  # this process's own bucket
    assert limiter.stage.redis_events["down"] == 1
    assert limiter.stage.redis_events["local"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "distpat.ratelimit"]
    assert len(warnings) == 1
    assert "Redis failed" in warnings[0]


# -- the page --------------------------------------------------------------------------------------


async def test_the_ratelimit_code_of_docs_aiohttp_md_runs() -> None:
    """The page's python blocks run in one namespace; ``build_limited_app()`` is served."""
    namespace: dict[str, Any] = {"__name__": "docs_aiohttp_ratelimit"}
    for block in python_blocks(ROOT / "docs" / "aiohttp.md"):
        exec(compile(block, "docs/aiohttp.md", "exec"), namespace)
    app = namespace["build_limited_app"]()
    async with TestClient(TestServer(app, host=HOST)) as client:
        answers = [await client.get("/items") for _ in range(22)]
        assert [r.status for r in answers] == [200] * 21 + [429]
        assert await answers[0].text() == "items"
        assert answers[0].headers["RateLimit-Policy"] == '"per-ip";q=21;w=3, "per-key";q=1;w=1'
        keyed = await client.get("/items", headers={"X-Api-Key": "k"})
        assert keyed.status == 429  # the per-ip limit still refuses it
