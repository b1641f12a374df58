"""The metrics and readiness of every worker, gathered by the parent of ``--workers N``.

Each worker answers on a Unix socket of its own (in a directory the parent made):
a line ``metrics`` gets its Prometheus text exposition, ``ready`` gets ``ready``,
``draining`` or ``not ready``; the worker closes the connection after each answer.
The parent serves the admin listener and asks every worker at each scrape, in
parallel, with a deadline: a worker that is dead or stuck is left out (and counted
in ``distpat_workers_answering``), never waited for.

:func:`merge_expositions` adds the workers' samples up: counters and histograms
are summed, as are gauges of things each worker has its own of (connections,
requests in flight); ``distpat_upstream_healthy`` is the lowest of the workers'
(an upstream any worker has ejected is reported down), and gauges every worker
reports alike (build info, certificate expiry) are given once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from distpat.net.admin import MetricsSource

__all__ = ["WorkerGroupStats", "WorkerSource", "merge_expositions", "serve_worker_stats"]

log = logging.getLogger("distpat.proxy")

ASK_TIMEOUT = 2.0
"""Seconds the parent waits for one worker's answer before leaving it out."""

_LOWEST = frozenset({"distpat_upstream_healthy"})
_SAME_IN_EVERY_WORKER = frozenset({"distpat_build_info", "distpat_tls_certificate_expiry_seconds"})


class WorkerSource(Protocol):
    """What a worker reports: ProxyServer and TcpProxyServer."""

    @property
    def metrics(self) -> MetricsSource: ...

    @property
    def draining(self) -> bool: ...

    def ready(self) -> bool: ...


# -- the worker's side ------------------------------------------------------------------------


async def serve_worker_stats(path: str, source: WorkerSource) -> asyncio.AbstractServer:
    """Answer the parent's questions on the Unix socket ``path`` (see the module's docstring)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            question = (await reader.readline()).strip()
            if question == b"metrics":
                writer.write(source.metrics.render()[0])
            elif question == b"ready":
                writer.write(b"draining" if source.draining else b"ready" if source.ready() else b"not ready")
            await writer.drain()
        except OSError:
            pass  # the parent gave up on us: nothing to do
        finally:
            writer.close()

    return await asyncio.start_unix_server(answer, path)


# -- the parent's side ------------------------------------------------------------------------


async def _ask(path: str, question: bytes) -> bytes | None:
    try:
        async with asyncio.timeout(ASK_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(question + b"\n")
                return await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None


class WorkerGroupStats:
    """The parent's view of its workers, for the admin application (see distpat.net.admin)."""

    def __init__(self, paths: Sequence[str], draining: Callable[[], bool]) -> None:
        self.paths = tuple(paths)
        self._draining = draining

    async def _ask_all(self, question: bytes) -> list[bytes]:
        answers = await asyncio.gather(*(_ask(path, question) for path in self.paths))
        return [a for a in answers if a is not None]

    async def render(self) -> tuple[bytes, str]:
        texts = await self._ask_all(b"metrics")
        merged = merge_expositions([t.decode("utf-8") for t in texts])
        summary = (
            "# HELP distpat_workers Worker processes started.\n"
            "# TYPE distpat_workers gauge\n"
            f"distpat_workers {len(self.paths)}\n"
            "# HELP distpat_workers_answering Workers whose metrics this scrape gathered.\n"
            "# TYPE distpat_workers_answering gauge\n"
            f"distpat_workers_answering {len(texts)}\n"
        )
        return merged + summary.encode("ascii"), CONTENT_TYPE_LATEST

    async def ready(self) -> bool:
        """Ready when at least one worker answers and every worker that answers is ready."""
        answers = await self._ask_all(b"ready")
        return bool(answers) and all(a == b"ready" for a in answers)

    def draining(self) -> bool:
        return self._draining()


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_expositions(texts: Sequence[str]) -> bytes:
    """One text exposition adding up several processes' (see the module's docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            rule = _rule(family.name, family.type)
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = merged.get(key)
                if old is None:
                    merged[key] = s.value
                elif s.name.endswith("_created") or rule == "lowest":
                    merged[key] = min(old, s.value)
                elif rule == "sum":
                    merged[key] = old + s.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)


def _rule(name: str, kind: str) -> str:
    if kind != "gauge":
        return "sum"
    if name in _LOWEST:
        return "lowest"
    if name in _SAME_IN_EVERY_WORKER:
        return "once"
    return "sum"
