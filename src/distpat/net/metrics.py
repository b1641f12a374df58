"""The proxy's Prometheus metrics, kept in a registry of its own.

:class:`ProxyMetrics` owns a private :class:`prometheus_client.CollectorRegistry`,
never the process-wide default one, so several proxies (or tests) in one process
each count their own traffic and never collide on metric names.

The engine calls the recording methods on every request and connection, so they
are kept cheap: requests, latencies and connections are tallied in plain
numbers, and a collector turns them into metric families only when /metrics is
scraped; the health count is kept alongside the gauge instead of being read
back from it.

Metrics (all names as they appear in the text exposition):

``distpat_http_requests_total{status, upstream}`` (counter)
    Requests answered to clients, by response status code and by the upstream
    that answered (``upstream=""`` when the proxy answered by itself: an error
    page, a redirect, a cache hit).
``distpat_upstream_response_seconds{upstream}`` (histogram)
    Time from sending a request to an upstream until its response was
    complete, in seconds. Buckets span 0.5 ms to 30 s.
``distpat_open_connections`` (gauge)
    Client connections open now.
``distpat_connections_total`` (counter)
    Client connections accepted since start.
``distpat_upstream_healthy{upstream}`` (gauge)
    1 while the upstream is considered healthy, 0 while it is not.
``distpat_upstream_in_flight{upstream}`` (gauge)
    Requests sent to the upstream and not yet finished (read from each upstream's own count of
    outstanding requests at scrape time).
``distpat_http_request_body_bytes_total`` / ``distpat_http_response_body_bytes_total`` (counters)
    Request body bytes received from clients, response body bytes sent to them (as nginx's
    ``$body_bytes_sent``), for every answered request.
``distpat_config_reloads_total{result}`` (counter)
    Configuration reloads on SIGHUP: ``ok`` (applied) or ``refused`` (the old one stays).
``distpat_build_info{version, python, loop}`` (gauge, always 1)
    The distpat version, the Python version and the event loop (``uvloop`` or ``asyncio``).
``distpat_tls_handshake_failures_total{reason}`` (counter, TLS listeners)
    Handshakes refused, by reason: ``protocol_version``, ``no_client_certificate``,
    ``bad_client_certificate``, ``no_shared_cipher``, ``not_tls``, ``other``.
``distpat_tls_certificate_expiry_seconds{certificate, names}`` (gauge, TLS listeners)
    Seconds until the served certificate's notAfter (negative once expired); follows reloads.

The pipeline's stages add their own, read from :meth:`Stage.stats
<distpat.core.stage.Stage.stats>` at scrape time (:meth:`ProxyMetrics.watch_stages`, so a reload's
new stages are the ones read; :mod:`distpat.net.stage_metrics`). The rate limiter's
(:class:`~distpat.core.ratelimit_stage.RateLimitStage`):

``distpat_ratelimit_decisions_total{stage, limit, decision}`` (counter)
    Requests judged by each limit, by decision: ``admit``, ``delay`` (held, then admitted),
    ``reject``, ``dry_run_reject`` (would have been refused; admitted), ``table_full`` (a new key
    refused: the key table is full), ``concurrency`` (too many in flight for the key). A request
    refused by one limit is counted by that limit only.
``distpat_ratelimit_keys{stage, limit}`` (gauge)
    Keys held in this process's table of the limit (with ``--workers N``: the sum of the workers'
    tables, each worker keeping its own).
``distpat_ratelimit_redis_events_total{stage, event}`` (counter, shared mode)
    The shared limiter's Redis events: ``error`` (a failed call), ``down`` and ``up`` (switches
    away from Redis and back), and the decisions made while down (``open``, ``closed``, ``local``).
"""

from __future__ import annotations

import asyncio
import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

import distpat
from distpat.core.stage import Stage
from distpat.net.stage_metrics import stage_families

__all__ = ["UPSTREAM_LATENCY_BUCKETS", "ProxyMetrics", "TLSSource"]


class TLSSource(Protocol):
    """What the TLS metrics are read from at scrape time (distpat.net.tls.CertificateStore)."""

    @property
    def handshake_failures(self) -> dict[str, int]: ...

    def expiries(self) -> Iterable[tuple[str, str, float]]:
        """(certificate file, its names, notAfter as a Unix time) of each certificate served."""
        ...


def _loop_name() -> str:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "none"
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


UPSTREAM_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of ``distpat_upstream_response_seconds``; ``+Inf`` is added after 30 s."""


class _TrafficCollector:
    """Exposes the plain-number tallies of :class:`ProxyMetrics` at scrape time.

    Counting a request is then a dict update (well under a microsecond)
    rather than a prometheus_client child's locked increment and histogram
    walk; the families are built only when /metrics is read.
    """

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        requests = CounterMetricFamily(
            "distpat_http_requests",
            "Requests answered to clients, by status code and answering upstream "
            '(upstream="" when the proxy answered by itself).',
            labels=("status", "upstream"),
        )
        for (status, upstream), count in sorted(m._requests.items()):
            requests.add_metric((str(status), upstream), count)
        yield requests
        latency = HistogramMetricFamily(
            "distpat_upstream_response_seconds",
            "Seconds from sending a request to an upstream until its response was complete.",
            labels=("upstream",),
        )
        for upstream, (counts, total) in sorted(m._latency.items()):
            cumulative, running = [], 0
            for bound, count in zip((*UPSTREAM_LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            latency.add_metric((upstream,), cumulative, total)
        yield latency
        yield GaugeMetricFamily("distpat_open_connections", "Client connections open now.", value=m._open)
        yield CounterMetricFamily(
            "distpat_connections", "Client connections accepted since start.", value=m._accepted
        )
        yield CounterMetricFamily(
            "distpat_http_request_body_bytes",
            "Request body bytes received from clients.",
            value=m._request_bytes,
        )
        yield CounterMetricFamily(
            "distpat_http_response_body_bytes",
            "Response body bytes sent to clients.",
            value=m._response_bytes,
        )
        in_flight = GaugeMetricFamily(
            "distpat_upstream_in_flight",
            "Requests sent to the upstream and not yet finished.",
            labels=("upstream",),
        )
        counts = dict(m._in_flight)
        if m._in_flight_source is not None:
            for name, count in m._in_flight_source():
                counts[name] = counts.get(name, 0) + count
        for name, count in sorted(counts.items()):
            in_flight.add_metric((name,), count)
        yield in_flight
        info = GaugeMetricFamily(
            "distpat_build_info",
            "The distpat version, Python version and event loop; always 1.",
            labels=("version", "python", "loop"),
        )
        info.add_metric((distpat.__version__, platform.python_version(), _loop_name()), 1)
        yield info
        decisions = CounterMetricFamily(
            "distpat_stage_decisions",
            "Requests by what a pipeline stage decided for them (a split's variant, a shard).",
            labels=("stage", "decision"),
        )
        for (stage, decision), count in sorted(m._decisions.items()):
            decisions.add_metric((stage, decision), count)
        yield decisions
        mirrors = CounterMetricFamily(
            "distpat_mirror_requests",
            "Mirror copies by pool and fate: sent (answered), failed, dropped (too many in flight), "
            "too_large (not copied).",
            labels=("pool", "result"),
        )
        for (pool, result), count in sorted(m._mirrors.items()):
            mirrors.add_metric((pool, result), count)
        yield mirrors
        reloads = CounterMetricFamily(
            "distpat_config_reloads",
            "Configuration reloads (SIGHUP), applied (ok) or refused.",
            labels=("result",),
        )
        for result, count in m._reloads.items():
            reloads.add_metric((result,), count)
        yield reloads
        tls = m._tls
        if tls is not None:
            failures = CounterMetricFamily(
                "distpat_tls_handshake_failures",
                "TLS handshakes refused, by reason.",
                labels=("reason",),
            )
            for reason, count in sorted(tls.handshake_failures.items()):
                failures.add_metric((reason,), count)
            yield failures
            expiry = GaugeMetricFamily(
                "distpat_tls_certificate_expiry_seconds",
                "Seconds until the served certificate's notAfter (negative once expired).",
                labels=("certificate", "names"),
            )
            now = time.time()
            for path, names, not_after in tls.expiries():
                expiry.add_metric((path, names), not_after - now)
            yield expiry
        if m._stages is not None:
            yield from stage_families(m._stages())


class ProxyMetrics:
    """The metrics of one proxy, in a registry that belongs to it alone.

    Upstreams are named by the caller (``"10.0.0.5:8080"``, or a pool member's
    name); the name becomes the ``upstream`` label value as given.
    """

    __slots__ = (
        "_accepted",
        "_healthy",
        "_in_flight",
        "_in_flight_source",
        "_latency",
        "_open",
        "_registry",
        "_decisions",
        "_mirrors",
        "_reloads",
        "_request_bytes",
        "_requests",
        "_response_bytes",
        "_stages",
        "_tls",
        "_upstream_healthy",
        "_upstream_healthy_children",
    )

    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        registry = self._registry
        # Hot-path tallies: plain numbers, turned into metric families at scrape time.
        self._requests: dict[tuple[int, str], int] = {}
        self._latency: dict[str, list[Any]] = {}  # upstream -> [bucket counts, sum]
        self._open = 0
        self._accepted = 0
        self._request_bytes = 0
        self._response_bytes = 0
        # upstream -> requests in flight counted by hand (upstream_request_started/finished) ...
        self._in_flight: dict[str, int] = {}
        # ... and the engine's own per-upstream counts, read at scrape time (watch_upstreams)
        self._in_flight_source: Callable[[], Iterable[tuple[str, int]]] | None = None
        self._tls: TLSSource | None = None
        self._stages: Callable[[], Iterable[Stage]] | None = None
        self._reloads = {"ok": 0, "refused": 0}
        self._decisions: dict[tuple[str, str], int] = {}
        self._mirrors: dict[tuple[str, str], int] = {}
        registry.register(_TrafficCollector(self))
        self._upstream_healthy = Gauge(
            "distpat_upstream_healthy",
            "1 while the upstream is considered healthy, 0 while it is not.",
            ("upstream",),
            registry=registry,
        )
        self._upstream_healthy_children: dict[str, Gauge] = {}
        # upstream -> healthy, so healthy_upstreams() never reads the gauge back.
        self._healthy: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"<ProxyMetrics upstreams={len(self._healthy)} healthy={self.healthy_upstreams()}>"

    @property
    def registry(self) -> CollectorRegistry:
        """The registry holding this proxy's metrics (to add collectors, or to scrape it another way)."""
        return self._registry

    # -- requests -------------------------------------------------------------------------------

    def request_finished(
        self,
        status: int,
        upstream: str | None,
        upstream_seconds: float | None,
        request_bytes: int = 0,
        response_bytes: int = 0,
    ) -> None:
        """Count one answered request; observe the upstream's response time when there was one.

        ``upstream`` is None when the proxy answered by itself (counted with ``upstream=""``);
        ``upstream_seconds`` is None when no upstream response was received. ``request_bytes``
        and ``response_bytes`` are the body bytes received and sent.
        """
        self._request_bytes += request_bytes
        self._response_bytes += response_bytes
        name = upstream or ""
        key = (status, name)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        if upstream_seconds is not None:
            tally = self._latency.get(name)
            if tally is None:
                tally = self._latency[name] = [[0] * (len(UPSTREAM_LATENCY_BUCKETS) + 1), 0.0]
            tally[0][bisect_left(UPSTREAM_LATENCY_BUCKETS, upstream_seconds)] += 1
            tally[1] += upstream_seconds

    # -- client connections ---------------------------------------------------------------------

    def stage_decided(self, stage: str, decision: str) -> None:
        key = (stage, decision)
        self._decisions[key] = self._decisions.get(key, 0) + 1

    def mirror_event(self, pool: str, result: str) -> None:
        key = (pool, result)
        self._mirrors[key] = self._mirrors.get(key, 0) + 1

    def connection_opened(self) -> None:
        """A client connection was accepted."""
        self._open += 1
        self._accepted += 1

    def connection_closed(self) -> None:
        """A client connection was closed (by either side)."""
        self._open -= 1

    # -- upstreams ------------------------------------------------------------------------------

    def set_upstream_health(self, upstream: str, healthy: bool) -> None:
        """Record whether ``upstream`` is healthy now (first call also makes it known)."""
        gauge = self._upstream_healthy_children.get(upstream)
        if gauge is None:
            gauge = self._upstream_healthy.labels(upstream)
            self._upstream_healthy_children[upstream] = gauge
        gauge.set(1 if healthy else 0)
        self._healthy[upstream] = healthy

    def healthy_upstreams(self) -> int:
        """How many known upstreams were last reported healthy."""
        return sum(self._healthy.values())

    def config_reloaded(self, *, ok: bool) -> None:
        """A configuration reload was applied (``ok``) or refused."""
        self._reloads["ok" if ok else "refused"] += 1

    def watch_upstreams(self, source: Callable[[], Iterable[tuple[str, int]]] | None) -> None:
        """Read ``distpat_upstream_in_flight`` from ``source`` at scrape time: (upstream, requests
        in flight) pairs, such as the proxy's own per-upstream counts. Nothing is done per request."""
        self._in_flight_source = source

    def watch_stages(self, source: Callable[[], Iterable[Stage]] | None) -> None:
        """Expose the samples of the stages ``source`` gives at each scrape (:meth:`Stage.stats
        <distpat.core.stage.Stage.stats>`): a function reading the pipeline in service, so the
        stages of a reload are the ones read. Nothing is done per request."""
        self._stages = source

    def watch_tls(self, source: TLSSource | None) -> None:
        """Expose the handshake failures and certificate expiry of a TLS listener."""
        self._tls = source

    def upstream_request_started(self, upstream: str) -> None:
        """A request was sent to ``upstream``; pair with :meth:`upstream_request_finished`.

        For callers that count by hand; the proxy's engine is read through :meth:`watch_upstreams`.
        """
        self._in_flight[upstream] = self._in_flight.get(upstream, 0) + 1

    def upstream_request_finished(self, upstream: str) -> None:
        """A request to ``upstream`` ended (answered, failed or cancelled)."""
        self._in_flight[upstream] = self._in_flight.get(upstream, 0) - 1

    def remove_upstream(self, upstream: str) -> None:
        """Forget an upstream that left the configuration: drop its health and in-flight series.

        Its request counts and response-time histogram stay, as counters should; unknown names
        are ignored.
        """
        self._healthy.pop(upstream, None)
        if self._upstream_healthy_children.pop(upstream, None) is not None:
            self._upstream_healthy.remove(upstream)
        self._in_flight.pop(upstream, None)

    # -- exposition -----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of these metrics, and the Content-Type to send it with."""
        return generate_latest(self._registry), CONTENT_TYPE_LATEST
