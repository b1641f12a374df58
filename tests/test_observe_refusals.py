"""Every answer the proxy writes itself is in the access log and in /metrics, with its real size."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from distpat.net.proxy import ProxyConfig, ProxyServer
from distpat.net.server import EngineSettings
from tests.httpkit import Backend, RawClient, Reply, Request, Response
from tests.nutcracker import free_ports
from tests.test_admin import sample, samples_of


@contextlib.asynccontextmanager
async def logged_proxy(*urls: str, **settings: object) -> AsyncIterator[ProxyServer]:
    server = ProxyServer(
        ProxyConfig(
            listen=("127.0.0.1", 0),
            upstreams=urls,
            access_log="json",
            settings=replace(EngineSettings(), **settings),  # type: ignore[arg-type]
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "distpat.access"]


async def answer_of(port: int, raw: bytes, *, wait: float = 5.0) -> Response:
    client = await RawClient.connect(port)
    try:
        await client.send(raw)
        [response] = await client.read_responses(1, timeout=wait)
        return response
    finally:
        await client.close()


@dataclass(frozen=True)
class Case:
    raw: bytes
    status: int
    request: str
    settings: tuple[tuple[str, object], ...] = ()


CASES = {
    "malformed": Case(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n", 400, "GET / HTTP/1.1"),
    "garbage": Case(b"\x01\x02\x03 nonsense\r\n\r\n", 400, "-"),
    "smuggling": Case(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "POST / HTTP/1.1",
    ),
    "too long target": Case(
        b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
        414,
        "GET /",
        (("max_header_bytes", 200),),
    ),
    "too large head": Case(
        b"GET /h HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 300 + b"\r\n\r\n",
        431,
        "GET /h",
        (("max_header_bytes", 200),),
    ),
    "too large body": Case(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n",
        413,
        "POST /up HTTP/1.1",
        (("max_body_bytes", 100),),
    ),
    "version": Case(b"GET /v HTTP/2.0\r\nHost: h\r\n\r\n", 505, "GET /v HTTP/2.0"),
    "connect": Case(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n", 501, "CONNECT"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_a_refused_request_is_logged_and_counted_with_its_size(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES[name]
    async with Backend() as backend, logged_proxy(backend.url, **dict(case.settings)) as p:
        with caplog.at_level(logging.INFO, logger="distpat.access"):
            r = await answer_of(p.port, case.raw)
            await asyncio.sleep(0.05)
        metrics = samples_of(p.metrics.render()[0].decode())
    assert r.status == case.status
    assert backend.requests == []  # nothing was forwarded
    [line] = access_lines(caplog)
    assert line["status"] == case.status
    assert str(line["request"]).startswith(case.request)
    assert line["body_bytes_sent"] == len(r.body) > 0
    assert line["upstream"] is None
    assert sample(metrics, "distpat_http_requests_total", status=str(case.status), upstream="") == 1
    assert sample(metrics, "distpat_http_response_body_bytes_total") == len(r.body)


async def test_a_slow_head_is_answered_408_and_logged_with_its_partial_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Backend() as backend, logged_proxy(backend.url, header_timeout=0.3) as p:
        with caplog.at_level(logging.INFO, logger="distpat.access"):
            client = await RawClient.connect(p.port)
            try:
                await client.send(b"GET /slow")  # the rest never comes (slowloris)
                [r] = await client.read_responses(1, timeout=10)
            finally:
                await client.close()
        metrics = samples_of(p.metrics.render()[0].decode())
    assert r.status == 408
    [line] = access_lines(caplog)
    assert line["status"] == 408
    assert line["request"] == "GET /slow"
    assert float(line["request_time"]) >= 0.25  # the time the head was waited for
    assert line["body_bytes_sent"] == len(r.body)
    assert sample(metrics, "distpat_http_requests_total", status="408", upstream="") == 1


async def test_an_error_behind_pipelined_requests_is_logged_after_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Backend() as backend, logged_proxy(backend.url) as p:
        with caplog.at_level(logging.INFO, logger="distpat.access"):
            client = await RawClient.connect(p.port)
            try:
                await client.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/2.0\r\nHost: h\r\n\r\n")
                raw = await client.read_until_closed()
            finally:
                await client.close()
    assert raw.startswith(b"HTTP/1.1 200 "), raw
    assert b"HTTP/1.1 505 " in raw, raw
    error = raw[raw.index(b"HTTP/1.1 505 ") :]
    lines = access_lines(caplog)
    logged = [(x["request"], x["status"]) for x in lines]
    assert logged == [("GET /a HTTP/1.1", 200), ("GET /b HTTP/2.0", 505)]
    assert lines[1]["body_bytes_sent"] == len(error) - error.index(b"\r\n\r\n") - 4


async def test_too_many_connections_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async with Backend() as backend, logged_proxy(backend.url, max_connections=1) as p:
        first = await RawClient.connect(p.port)
        try:
            await first.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            await first.read_responses(1)
            with caplog.at_level(logging.INFO, logger="distpat.access"):
                r = await answer_of(p.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        finally:
            await first.close()
        metrics = samples_of(p.metrics.render()[0].decode())
    assert r.status == 503
    [line] = access_lines(caplog)
    assert (line["request"], line["status"], line["body_bytes_sent"]) == ("-", 503, len(r.body))
    assert sample(metrics, "distpat_http_requests_total", status="503", upstream="") == 1


async def test_a_proxy_written_502_is_logged_with_its_body_size(caplog: pytest.LogCaptureFixture) -> None:
    (dead,) = free_ports(1)  # nothing listens there
    async with logged_proxy(f"http://127.0.0.1:{dead}") as p:
        with caplog.at_level(logging.INFO, logger="distpat.access"):
            r = await answer_of(p.port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        metrics = samples_of(p.metrics.render()[0].decode())
    assert r.status == 502
    [line] = access_lines(caplog)
    assert line["status"] == 502
    assert line["request"] == "GET /x HTTP/1.1"
    assert line["body_bytes_sent"] == len(r.body) > 0
    assert sample(metrics, "distpat_http_requests_total", status="502", upstream="") == 1


async def test_a_proxy_written_504_is_logged_and_counted_by_upstream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def slow(request: Request) -> Reply:
        return Reply(body=b"late", delay=3.0)

    async with Backend(slow) as backend, logged_proxy(backend.url, response_timeout=0.3) as p:
        with caplog.at_level(logging.INFO, logger="distpat.access"):
            r = await answer_of(p.port, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n", wait=10)
        metrics = samples_of(p.metrics.render()[0].decode())
    assert r.status == 504
    [line] = access_lines(caplog)
    assert line["status"] == 504
    assert line["body_bytes_sent"] == len(r.body) > 0
    name = f"127.0.0.1:{backend.port}"
    assert line["upstream"] == name
    assert sample(metrics, "distpat_http_requests_total", status="504", upstream=name) == 1


async def test_byte_counters_and_in_flight_follow_the_traffic() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: Request) -> Reply:
        if request.target == b"/hold":
            started.set()
            await release.wait()
        return Reply(body=b"x" * 1000)

    async with Backend(handler) as backend, logged_proxy(backend.url) as p:
        r = await answer_of(p.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 300\r\n\r\n" + b"y" * 300)
        assert r.status == 200
        held = asyncio.ensure_future(answer_of(p.port, b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\n"))
        await asyncio.wait_for(started.wait(), 5)
        during = samples_of(p.metrics.render()[0].decode())
        release.set()
        assert (await held).status == 200
        await asyncio.sleep(0.05)
        after = samples_of(p.metrics.render()[0].decode())
    name = f"127.0.0.1:{backend.port}"
    assert sample(during, "distpat_upstream_in_flight", upstream=name) == 1
    assert sample(after, "distpat_upstream_in_flight", upstream=name) == 0
    assert sample(after, "distpat_http_request_body_bytes_total") == 300
    assert sample(after, "distpat_http_response_body_bytes_total") == 2000
    [info] = [k for k in after if k[0] == "distpat_build_info"]
    labels = dict(info[1])
    assert labels["loop"] == "asyncio"
    assert labels["version"]
    assert labels["python"]
