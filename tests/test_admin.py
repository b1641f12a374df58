"""The admin listener and the proxy metrics, over real loopback sockets."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from distpat.errors import DistpatError
from distpat.net.admin import AdminServer, AdminServerStateError, create_admin_app
from distpat.net.metrics import UPSTREAM_LATENCY_BUCKETS, ProxyMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

METRIC_NAMES = (
    "distpat_http_requests_total",
    "distpat_upstream_response_seconds",
    "distpat_open_connections",
    "distpat_connections_total",
    "distpat_upstream_healthy",
    "distpat_upstream_in_flight",
)


def samples_of(text: str) -> Samples:
    """Every sample of an exposition, keyed by sample name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def rendered(metrics: ProxyMetrics) -> Samples:
    body, _ = metrics.render()
    return samples_of(body.decode("utf-8"))


@dataclass
class Flags:
    ready: bool = False
    draining: bool = False


@dataclass
class Admin:
    url: str
    server: AdminServer
    metrics: ProxyMetrics
    flags: Flags


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    metrics = ProxyMetrics()
    flags = Flags()
    server = AdminServer(
        create_admin_app(metrics=metrics, ready=lambda: flags.ready, draining=lambda: flags.draining)
    )
    await server.start("127.0.0.1", 0)
    try:
        yield Admin(f"http://127.0.0.1:{server.port}", server, metrics, flags)
    finally:
        await server.close()


async def fetch(
    session: aiohttp.ClientSession, method: str, url: str
) -> tuple[int, str, CIMultiDictProxy[str]]:
    async with session.request(method, url) as response:
        return response.status, await response.text(), response.headers


# -- probes ---------------------------------------------------------------------------------------


async def test_healthz_answers_ok(admin: Admin, session: aiohttp.ClientSession) -> None:
    status, body, headers = await fetch(session, "GET", admin.url + "/healthz")
    assert (status, body) == (200, "ok\n")
    assert headers["Cache-Control"] == "no-store"


async def test_healthz_answers_even_when_not_ready(admin: Admin, session: aiohttp.ClientSession) -> None:
    admin.flags.draining = True
    status, body, _ = await fetch(session, "GET", admin.url + "/healthz")
    assert (status, body) == (200, "ok\n")


async def test_readyz_follows_ready_and_draining(admin: Admin, session: aiohttp.ClientSession) -> None:
    url = admin.url + "/readyz"
    status, body, _ = await fetch(session, "GET", url)
    assert (status, body) == (503, "no healthy upstream\n")

    admin.flags.ready = True
    status, body, _ = await fetch(session, "GET", url)
    assert (status, body) == (200, "ready\n")

    admin.flags.draining = True
    status, body, _ = await fetch(session, "GET", url)
    assert (status, body) == (503, "draining\n")

    admin.flags.ready = False  # draining is the reason given while both hold
    status, body, _ = await fetch(session, "GET", url)
    assert (status, body) == (503, "draining\n")

    admin.flags.draining = False
    admin.flags.ready = True
    status, body, _ = await fetch(session, "GET", url)
    assert (status, body) == (200, "ready\n")


async def test_readyz_driven_by_upstream_health(session: aiohttp.ClientSession) -> None:
    metrics = ProxyMetrics()
    server = AdminServer(create_admin_app(metrics=metrics, ready=lambda: metrics.healthy_upstreams() > 0))
    await server.start("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.port}/readyz"
        assert (await fetch(session, "GET", url))[0] == 503
        metrics.set_upstream_health("a:80", True)
        assert (await fetch(session, "GET", url))[:2] == (200, "ready\n")
        metrics.set_upstream_health("a:80", False)
        assert (await fetch(session, "GET", url))[:2] == (503, "no healthy upstream\n")
    finally:
        await server.close()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_works_where_get_does(admin: Admin, session: aiohttp.ClientSession, path: str) -> None:
    admin.flags.ready = True
    async with session.head(admin.url + path) as response:
        assert response.status == 200
        assert await response.read() == b""


async def test_head_readyz_reports_503(admin: Admin, session: aiohttp.ClientSession) -> None:
    async with session.head(admin.url + "/readyz") as response:
        assert response.status == 503


@pytest.mark.parametrize("path", ["/", "/health", "/healthz/", "/metrics/x", "/READYZ"])
async def test_unknown_paths_are_404(admin: Admin, session: aiohttp.ClientSession, path: str) -> None:
    status, _, _ = await fetch(session, "GET", admin.url + path)
    assert status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_other_methods_are_405(
    admin: Admin, session: aiohttp.ClientSession, path: str, method: str
) -> None:
    status, _, headers = await fetch(session, method, admin.url + path)
    assert status == 405
    assert set(headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


async def test_default_draining_is_never(session: aiohttp.ClientSession) -> None:
    server = AdminServer(create_admin_app(metrics=ProxyMetrics(), ready=lambda: True))
    await server.start("127.0.0.1", 0)
    try:
        status, body, _ = await fetch(session, "GET", f"http://127.0.0.1:{server.port}/readyz")
        assert (status, body) == (200, "ready\n")
    finally:
        await server.close()


# -- /metrics ---------------------------------------------------------------------------------------


async def test_metrics_endpoint_serves_the_exposition(admin: Admin, session: aiohttp.ClientSession) -> None:
    m = admin.metrics
    m.connection_opened()
    m.connection_opened()
    m.connection_opened()
    m.connection_closed()
    m.request_finished(status=200, upstream="a:80", upstream_seconds=0.003)
    m.request_finished(status=200, upstream="a:80", upstream_seconds=0.2)
    m.request_finished(status=502, upstream="b:80", upstream_seconds=None)
    m.request_finished(status=404, upstream=None, upstream_seconds=None)
    m.set_upstream_health("a:80", True)
    m.set_upstream_health("b:80", False)
    m.upstream_request_started("a:80")
    m.upstream_request_started("a:80")
    m.upstream_request_finished("a:80")

    async with session.get(admin.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.headers["Content-Type"] == m.render()[1]
        text = await response.text()

    for name in METRIC_NAMES:
        assert name in text
    s = samples_of(text)
    assert sample(s, "distpat_http_requests_total", status="200", upstream="a:80") == 2
    assert sample(s, "distpat_http_requests_total", status="502", upstream="b:80") == 1
    assert sample(s, "distpat_http_requests_total", status="404", upstream="") == 1
    assert sample(s, "distpat_open_connections") == 2
    assert sample(s, "distpat_connections_total") == 3
    assert sample(s, "distpat_upstream_healthy", upstream="a:80") == 1
    assert sample(s, "distpat_upstream_healthy", upstream="b:80") == 0
    assert sample(s, "distpat_upstream_in_flight", upstream="a:80") == 1
    assert sample(s, "distpat_upstream_response_seconds_count", upstream="a:80") == 2
    assert sample(s, "distpat_upstream_response_seconds_sum", upstream="a:80") == pytest.approx(0.203)
    assert sample(s, "distpat_upstream_response_seconds_bucket", upstream="a:80", le="0.0025") == 0
    assert sample(s, "distpat_upstream_response_seconds_bucket", upstream="a:80", le="0.005") == 1
    assert sample(s, "distpat_upstream_response_seconds_bucket", upstream="a:80", le="0.25") == 2
    # No response time was observed for b:80 or for local answers.
    assert ("distpat_upstream_response_seconds_count", frozenset({("upstream", "b:80")})) not in s
    assert ("distpat_upstream_response_seconds_count", frozenset({("upstream", "")})) not in s


async def test_metrics_endpoint_reflects_later_changes(admin: Admin, session: aiohttp.ClientSession) -> None:
    url = admin.url + "/metrics"
    before = samples_of((await fetch(session, "GET", url))[1])
    assert sample(before, "distpat_connections_total") == 0
    admin.metrics.connection_opened()
    after = samples_of((await fetch(session, "GET", url))[1])
    assert sample(after, "distpat_connections_total") == 1


# -- ProxyMetrics without a server ---------------------------------------------------------------------


def test_histogram_buckets_span_half_a_millisecond_to_thirty_seconds() -> None:
    assert UPSTREAM_LATENCY_BUCKETS[0] == 0.0005
    assert UPSTREAM_LATENCY_BUCKETS[-1] == 30.0
    assert list(UPSTREAM_LATENCY_BUCKETS) == sorted(set(UPSTREAM_LATENCY_BUCKETS))
    m = ProxyMetrics()
    m.request_finished(status=200, upstream="u", upstream_seconds=0.0004)
    m.request_finished(status=200, upstream="u", upstream_seconds=31.0)
    s = rendered(m)
    assert sample(s, "distpat_upstream_response_seconds_bucket", upstream="u", le="0.0005") == 1
    assert sample(s, "distpat_upstream_response_seconds_bucket", upstream="u", le="30.0") == 1
    assert sample(s, "distpat_upstream_response_seconds_bucket", upstream="u", le="+Inf") == 2


def test_healthy_upstreams_counts_the_last_report_of_each() -> None:
    m = ProxyMetrics()
    assert m.healthy_upstreams() == 0
    m.set_upstream_health("a", True)
    m.set_upstream_health("b", True)
    m.set_upstream_health("c", False)
    assert m.healthy_upstreams() == 2
    m.set_upstream_health("a", True)  # repeated reports count once
    m.set_upstream_health("b", False)
    assert m.healthy_upstreams() == 1


def test_remove_upstream_drops_its_gauges_and_keeps_its_counts() -> None:
    m = ProxyMetrics()
    m.set_upstream_health("a", True)
    m.set_upstream_health("b", True)
    m.upstream_request_started("a")
    m.request_finished(status=200, upstream="a", upstream_seconds=0.01)
    m.remove_upstream("a")
    m.remove_upstream("never-seen")
    assert m.healthy_upstreams() == 1
    s = rendered(m)
    assert ("distpat_upstream_healthy", frozenset({("upstream", "a")})) not in s
    assert ("distpat_upstream_in_flight", frozenset({("upstream", "a")})) not in s
    assert sample(s, "distpat_upstream_healthy", upstream="b") == 1
    assert sample(s, "distpat_http_requests_total", status="200", upstream="a") == 1
    # The upstream can come back.
    m.set_upstream_health("a", False)
    assert sample(rendered(m), "distpat_upstream_healthy", upstream="a") == 0


def test_two_instances_do_not_interfere() -> None:
    first, second = ProxyMetrics(), ProxyMetrics()
    assert first.registry is not second.registry
    first.request_finished(status=200, upstream="a", upstream_seconds=0.1)
    first.connection_opened()
    first.set_upstream_health("a", True)
    first.upstream_request_started("a")

    s1, s2 = rendered(first), rendered(second)
    assert sample(s1, "distpat_http_requests_total", status="200", upstream="a") == 1
    assert sample(s1, "distpat_connections_total") == 1
    assert sample(s2, "distpat_connections_total") == 0
    assert sample(s2, "distpat_open_connections") == 0
    assert not any(name == "distpat_http_requests_total" for name, _ in s2)
    assert not any(name == "distpat_upstream_healthy" for name, _ in s2)
    assert second.healthy_upstreams() == 0


def test_the_global_registry_is_left_alone() -> None:
    ProxyMetrics().connection_opened()
    assert b"distpat_" not in generate_latest(REGISTRY)


def test_render_returns_text_exposition_and_its_content_type() -> None:
    body, content_type = ProxyMetrics().render()
    assert isinstance(body, bytes)
    assert content_type.startswith("text/plain")
    assert "charset=utf-8" in content_type
    assert b"# TYPE distpat_open_connections gauge" in body


# -- AdminServer lifecycle ------------------------------------------------------------------------------


async def test_port_before_start_is_an_error() -> None:
    server = AdminServer(create_admin_app(metrics=ProxyMetrics(), ready=lambda: True))
    with pytest.raises(AdminServerStateError):
        _ = server.port
    assert issubclass(AdminServerStateError, DistpatError)


async def test_start_twice_is_an_error_and_close_is_idempotent(session: aiohttp.ClientSession) -> None:
    server = AdminServer(create_admin_app(metrics=ProxyMetrics(), ready=lambda: True))
    await server.start("127.0.0.1", 0)
    try:
        port = server.port
        assert port > 0
        assert repr(server) == f"<AdminServer port={port}>"
        with pytest.raises(AdminServerStateError):
            await server.start("127.0.0.1", 0)
        assert (await fetch(session, "GET", f"http://127.0.0.1:{port}/healthz"))[0] == 200
    finally:
        await server.close()
    await server.close()
    with pytest.raises(AdminServerStateError):
        _ = server.port
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, "GET", f"http://127.0.0.1:{port}/healthz")


async def test_can_restart_after_close(session: aiohttp.ClientSession) -> None:
    server = AdminServer(create_admin_app(metrics=ProxyMetrics(), ready=lambda: True))
    for _ in range(2):
        await server.start("127.0.0.1", 0)
        try:
            assert (await fetch(session, "GET", f"http://127.0.0.1:{server.port}/healthz"))[0] == 200
        finally:
            await server.close()


async def test_bind_failure_raises_oserror_and_leaves_server_stopped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AdminServer(create_admin_app(metrics=ProxyMetrics(), ready=lambda: True))
        with pytest.raises(OSError):  # noqa: PT011 - the errno depends on the platform
            await server.start("127.0.0.1", port)
        with pytest.raises(AdminServerStateError):
            _ = server.port
        await server.close()
