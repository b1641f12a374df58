"""How the parent of --workers N adds up its workers' expositions (distpat.net.workerstats)."""

from __future__ import annotations

from distpat.net.metrics import ProxyMetrics
from distpat.net.workerstats import merge_expositions
from tests.test_admin import sample, samples_of


def worker(requests: int, seconds: float, healthy: bool, open_connections: int) -> str:
    m = ProxyMetrics()
    m.set_upstream_health("u:80", healthy)
    for _ in range(requests):
        m.request_finished(200, "u:80", seconds, 10, 100)
    for _ in range(open_connections):
        m.connection_opened()
    return m.render()[0].decode()


def test_counters_histograms_and_gauges_merge_by_their_kind() -> None:
    merged = samples_of(merge_expositions([worker(3, 0.0004, True, 2), worker(5, 0.2, False, 1)]).decode())
    assert sample(merged, "distpat_http_requests_total", status="200", upstream="u:80") == 8
    assert sample(merged, "distpat_upstream_response_seconds_count", upstream="u:80") == 8
    assert sample(merged, "distpat_upstream_response_seconds_bucket", upstream="u:80", le="0.0005") == 3
    assert sample(merged, "distpat_upstream_response_seconds_bucket", upstream="u:80", le="+Inf") == 8
    assert sample(merged, "distpat_upstream_response_seconds_sum", upstream="u:80") == 3 * 0.0004 + 1.0
    assert sample(merged, "distpat_http_request_body_bytes_total") == 80
    assert sample(merged, "distpat_http_response_body_bytes_total") == 800
    assert sample(merged, "distpat_open_connections") == 3  # each worker has its own
    assert sample(merged, "distpat_upstream_healthy", upstream="u:80") == 0  # ejected by one worker
    [info] = [v for (name, _), v in merged.items() if name == "distpat_build_info"]
    assert info == 1  # the same in every worker: given once


def test_one_worker_or_none() -> None:
    alone = worker(2, 0.01, True, 0)
    assert samples_of(merge_expositions([alone]).decode()) == samples_of(alone)
    assert merge_expositions([]) == b""
