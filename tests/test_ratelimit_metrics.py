"""The rate limiter's samples on /metrics: the stages' Stat samples as metric families
(distpat.net.stage_metrics), a real `distpat ratelimit` scraped, and --workers 2 summed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distpat.cli import build_parser
from distpat.cli.flags import flag_values
from distpat.config.ratelimit import RATELIMIT_OPTIONS, build_ratelimit_config
from distpat.core.stage import Request, Stage, Stat, Tick
from distpat.net.metrics import ProxyMetrics
from distpat.net.proxy import ProxyServer
from distpat.net.workerstats import merge_expositions
from tests.httpkit import HOST, Backend, Response, exchange
from tests.nutcracker import free_ports
from tests.test_admin import Samples, rendered, sample, samples_of
from tests.test_observe_tls import scrape
from tests.tlskit import running_distpat

DECISIONS = "distpat_ratelimit_decisions_total"
KEYS = "distpat_ratelimit_keys"


def config(*argv: str) -> Any:
    args = build_parser().parse_args(
        ["ratelimit", "--listen", f"{HOST}:1", "--upstream", f"http://{HOST}:1", *argv]
    )
    return build_ratelimit_config(flag_values(args, RATELIMIT_OPTIONS), environ={})[0]


def decisions(samples: Samples) -> dict[str, float]:
    """decision -> count of the one limit the command has (stage ``ratelimit``)."""
    out: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == DECISIONS:
            found = dict(labels)
            assert (found["stage"], found["limit"]) == ("ratelimit", "per-ip")
            out[found["decision"]] = value
    return out


# -- the families, from made-up stages ---------------------------------------------------------


class Reporting(Stage):
    def __init__(self, name: str, stats: tuple[Stat, ...]) -> None:
        self.name = name
        self._stats = stats

    def stats(self) -> tuple[Stat, ...]:
        return self._stats


class Broken(Stage):
    name = "broken"

    def stats(self) -> tuple[Stat, ...]:
        raise RuntimeError("a bug in a stage")


def test_samples_are_grouped_by_name_and_the_first_kind_and_help_stand() -> None:
    first = Reporting(
        "a",
        (
            Stat("demo_events", "Events.", "counter", (("stage", "a"),), 3),
            Stat("demo_level", "Level.", "gauge", (("stage", "a"),), 7),
            Stat("demo_events", "Events.", "gauge", (("stage", "x"),), 1),  # another kind: left out
            Stat("demo_events", "Other help.", "counter", (("stage", "y"),), 1),  # another help
            Stat("demo_level", "Level.", "gauge", (("stage", "a"),), 9),  # the same labels again
            Stat("not a name", "Bad.", "gauge", (), 1),
            Stat("demo_bad_label", "Bad.", "gauge", (("a-b", "1"),), 1),
            Stat("demo_kind", "Bad.", "histogram", (), 1),
        ),
    )
    second = Reporting("b", (Stat("demo_events_total", "Events.", "counter", (("stage", "b"),), 4),))
    metrics = ProxyMetrics()
    metrics.watch_stages(lambda: [first, Broken(), second])
    text = metrics.render()[0].decode()
    s = samples_of(text)
    assert sample(s, "demo_events_total", stage="a") == 3
    assert sample(s, "demo_events_total", stage="b") == 4  # "_total" given or not: one family
    assert sample(s, "demo_level", stage="a") == 7
    assert "# TYPE demo_events_total counter" in text
    assert "# TYPE demo_level gauge" in text
    assert not any(name.startswith(("demo_bad", "demo_kind", "not")) for name, _ in s)
    assert [k for k in s if k[0] == "demo_events_total"] == [
        ("demo_events_total", frozenset({("stage", "a")})),
        ("demo_events_total", frozenset({("stage", "b")})),
    ]
    metrics.watch_stages(None)
    assert not any(name.startswith("demo_") for name, _ in rendered(metrics))


def tick(at: float) -> Tick:
    return Tick(mono=at, wall=at, rand=0)


def test_a_reload_s_new_stages_are_the_ones_read() -> None:
    server = ProxyServer(config("--rate", "1r/m", "--limit-name", "old"))
    (stage,) = server.config.stages
    stage.on_request(Request(b"GET", b"/", client=HOST), tick(0))
    assert sample(rendered(server.metrics), DECISIONS, stage="ratelimit", limit="old", decision="admit") == 1
    server.reconfigure(config("--rate", "1r/m", "--limit-name", "new"))
    after = rendered(server.metrics)
    assert sample(after, KEYS, stage="ratelimit", limit="new") == 0
    assert not any(dict(labels).get("limit") == "old" for _, labels in after)


def test_workers_expositions_add_up_counters_and_the_keys_gauge() -> None:
    texts = []
    for clients in (2, 3):
        server = ProxyServer(config("--rate", "1r/m"))
        (stage,) = server.config.stages
        for i in range(clients):
            for _ in range(2):  # one admitted, one refused per client
                stage.on_request(Request(b"GET", b"/", client=f"10.0.0.{i}"), tick(0))
        texts.append(server.metrics.render()[0].decode())
    merged = samples_of(merge_expositions(texts).decode())
    assert decisions(merged) == {"admit": 5, "reject": 5}
    assert sample(merged, KEYS, stage="ratelimit", limit="per-ip") == 5


# -- a real `distpat ratelimit` ----------------------------------------------------------------


async def get(port: int) -> Response:
    (response,) = await exchange(port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    return response


async def test_served_decisions_and_keys_are_scraped(tmp_path: Path) -> None:
    async with Backend() as backend:
        port, admin = free_ports(2)
        argv = ["--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--upstream", backend.url]
        argv += ["--rate", "1r/m", "--burst", "2", "--nodelay"]
        async with running_distpat("ratelimit", tmp_path, port, argv, also=(admin,)):
            before = await scrape(admin)
            answers = [await get(port) for _ in range(6)]
            after = await scrape(admin)
        assert [r.status for r in answers] == [200, 200, 200, 429, 429, 429]
        assert decisions(before) == {}
        assert sample(before, KEYS, stage="ratelimit", limit="per-ip") == 0
        assert decisions(after) == {"admit": 3, "reject": 3}
        assert sample(after, KEYS, stage="ratelimit", limit="per-ip") == 1  # 127.0.0.1
        assert len(backend.requests) == 3


async def test_served_dry_run_counts_what_it_would_refuse(tmp_path: Path) -> None:
    async with Backend() as backend:
        port, admin = free_ports(2)
        argv = ["--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--upstream", backend.url]
        async with running_distpat(
            "ratelimit", tmp_path, port, [*argv, "--rate", "1r/m", "--dry-run"], also=(admin,)
        ):
            answers = [await get(port) for _ in range(4)]
            after = await scrape(admin)
        assert [r.status for r in answers] == [200] * 4
        assert decisions(after) == {"admit": 1, "dry_run_reject": 3}
        assert sample(after, KEYS, stage="ratelimit", limit="per-ip") == 1


async def test_served_with_two_workers_the_parent_sums_them(tmp_path: Path) -> None:
    count = 12
    async with Backend() as backend:
        port, admin = free_ports(2)
        argv = ["--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--upstream", backend.url]
        argv += ["--rate", "1r/m", "--burst", "2", "--nodelay", "--workers", "2"]
        async with running_distpat("ratelimit", tmp_path, port, argv, also=(admin,)):
            answers = [await get(port) for _ in range(count)]  # each on a new connection
            after = await scrape(admin)
        statuses = [r.status for r in answers]
        assert set(statuses) <= {200, 429}
        admitted = statuses.count(200)
        # each worker has its own table: 3 a worker at most, whichever worker got which request
        assert 3 <= admitted <= 6
        assert sample(after, "distpat_workers_answering") == 2
        assert decisions(after) == {"admit": admitted, "reject": count - admitted}
        keys = sample(after, KEYS, stage="ratelimit", limit="per-ip")
        assert keys in (1, 2)  # one key (127.0.0.1) in each worker that served a request
        if admitted > 3:
            assert keys == 2
        assert len(backend.requests) == admitted
