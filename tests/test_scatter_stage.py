"""The scatter/gather root as a pure stage: made-up SubResults, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpat.config.pipeline import load_pipeline
from distpat.config.scatter import build_scatter_config
from distpat.core.scatter_merge import LatencyWindow, merge_hits, parse_merge
from distpat.core.scatter_stage import ScatterStage
from distpat.core.stage import NO_TICK, Answer, Fetch, Request, SubResult
from distpat.errors import ConfigError

SHARDS = [("shard-0", ("a:1", "a:2")), ("shard-1", ("b:1", "b:2")), ("shard-2", ("c:1",))]


def hit(doc: str, score: float) -> dict[str, Any]:
    return {"id": doc, "score": score, "snippet": doc}


def leaf(*hits: dict[str, Any]) -> bytes:
    return json.dumps({"hits": list(hits), "shard": "0/3", "docs": 5, "took_ms": 1.0}).encode()


def fetch_of(stage: ScatterStage, target: bytes = b"/search?q=cat&k=3") -> Fetch:
    effect = stage.on_request(Request(b"GET", target, "127.0.0.1"), NO_TICK)
    assert isinstance(effect, Fetch)
    return effect


def ok(effect: Fetch, i: int, body: bytes, elapsed: float = 0.01, **kw: Any) -> SubResult:
    return SubResult(effect.requests[i], status=200, body=body, elapsed=elapsed, **kw)


def answer(effect: Fetch, *results: SubResult) -> tuple[int, dict[str, Any]]:
    out = effect.then(results)
    assert isinstance(out, Answer)
    return out.status, json.loads(out.body)


def test_one_subrequest_per_shard_with_its_replicas_and_the_target() -> None:
    effect = fetch_of(ScatterStage(SHARDS, deadline=0.5, hedge_after=0.02, hedge_max_percent=100))
    assert [(r.pool, r.order, r.target) for r in effect.requests] == [
        ("shard-0", ("a:1", "a:2"), b"/search?q=cat&k=3"),
        ("shard-1", ("b:1", "b:2"), b"/search?q=cat&k=3"),
        ("shard-2", ("c:1",), b"/search?q=cat&k=3"),
    ]
    assert (effect.deadline, effect.hedge_after, effect.hedge_max) == (0.5, 0.02, 2)  # 2 shards have a 2nd


def test_the_hits_are_merged_by_score_then_id_deduplicated_and_cut_to_k() -> None:
    effect = fetch_of(ScatterStage(SHARDS))
    status, body = answer(
        effect,
        ok(effect, 0, leaf(hit("x", 3.0), hit("b", 1.0)), elapsed=0.02),
        ok(effect, 1, leaf(hit("a", 1.0), hit("x", 3.0)), elapsed=0.05),
        ok(effect, 2, leaf(hit("y", 2.0)), elapsed=0.01),
    )
    assert status == 200
    assert [h["id"] for h in body["hits"]] == ["x", "y", "a"]
    assert body["shards"] == {"total": 3, "ok": 3, "failed": 0, "timed_out": 0}
    assert body["partial"] is False
    assert body["took_ms"] == 50.0


def test_a_failed_a_timed_out_and_a_non_json_shard_make_a_partial_answer() -> None:
    effect = fetch_of(ScatterStage(SHARDS, deadline=0.2))
    status, body = answer(
        effect,
        ok(effect, 0, b"<html>not json</html>"),
        SubResult(effect.requests[1], error="timeout", elapsed=0.2),
        ok(effect, 2, leaf(hit("y", 2.0))),
    )
    assert status == 200
    assert body["shards"] == {"total": 3, "ok": 1, "failed": 1, "timed_out": 1}
    assert body["partial"] is True
    assert [h["id"] for h in body["hits"]] == ["y"]


@pytest.mark.parametrize(
    ("first", "status"),
    [({"error": "connect"}, 502), ({"error": "timeout", "elapsed": 0.2}, 504), ({"status": 500}, 502)],
)
def test_need_all_refuses_a_partial_answer(first: dict[str, Any], status: int) -> None:
    effect = fetch_of(ScatterStage(SHARDS, deadline=0.2, need="all"))
    got, body = answer(
        effect,
        SubResult(effect.requests[0], **first),
        ok(effect, 1, leaf(hit("a", 1.0))),
        ok(effect, 2, leaf(hit("y", 2.0))),
    )
    assert got == status
    assert body["partial"] is True
    assert len(body["hits"]) == 2


def test_need_n_counts_the_shards_that_answered() -> None:
    stage = ScatterStage(SHARDS, need=2)
    effect = fetch_of(stage)
    failed = SubResult(effect.requests[0], error="connect")
    assert answer(effect, failed, ok(effect, 1, leaf()), ok(effect, 2, leaf()))[0] == 200
    effect = fetch_of(stage)
    late = SubResult(effect.requests[1], error="timeout", elapsed=1.0)
    assert answer(effect, failed, late, ok(effect, 2, leaf()))[0] == 502
    with pytest.raises(ConfigError):
        ScatterStage(SHARDS, need=4)


def test_a_leaf_answer_of_the_wrong_shape_is_a_failed_shard() -> None:
    effect = fetch_of(ScatterStage(SHARDS[:1]))
    bad = json.dumps({"hits": [{"id": 3, "score": "high"}]}).encode()
    status, body = answer(effect, ok(effect, 0, bad))
    assert status == 502
    assert body["shards"]["failed"] == 1


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/search", 400),
        (b"/search?q=%20", 400),
        (b"/search?q=a&k=0", 400),
        (b"/search?q=a&k=1001", 400),
        (b"/search?q=a&k=ten", 400),
        (b"/other?q=a", 404),
    ],
)
def test_bad_requests_are_answered_locally_with_json(target: bytes, status: int) -> None:
    effect = ScatterStage(SHARDS).on_request(Request(b"GET", target, "127.0.0.1"), NO_TICK)
    assert isinstance(effect, Answer)
    assert effect.status == status
    assert "error" in json.loads(effect.body)


def test_generic_merges_fan_out_any_path() -> None:
    stage = ScatterStage(SHARDS[:2], mode="sum:count", path=None)
    effect = fetch_of(stage, b"/api/count?x=1")
    assert effect.requests[0].target == b"/api/count?x=1"
    assert answer(effect, ok(effect, 0, b'{"count": 2}'), ok(effect, 1, b'{"count": 5}'))[1]["count"] == 7
    stage = ScatterStage(SHARDS[:2], mode="topk:items:n", path=None)
    effect = fetch_of(stage, b"/items?k=2")
    a, b = b'{"items": [{"n": 1}, {"n": 9}]}', b'{"items": [{"n": 5}]}'
    assert answer(effect, ok(effect, 0, a), ok(effect, 1, b))[1]["items"] == [{"n": 9}, {"n": 5}]
    stage = ScatterStage(SHARDS[:2], mode="concat:rows", path=None)
    effect = fetch_of(stage, b"/rows")
    got = answer(effect, ok(effect, 0, b'{"rows": [1, 2]}'), ok(effect, 1, b'{"rows": [3]}'))[1]
    assert got["rows"] == [1, 2, 3]
    with pytest.raises(ConfigError):
        parse_merge("topk:items")


def test_merge_hits_keeps_the_highest_copy_of_an_id() -> None:
    merged = merge_hits([[hit("a", 1.0)], [hit("a", 2.0), hit("b", 2.0)]], 10)
    assert [(h["id"], h["score"]) for h in merged] == [("a", 2.0), ("b", 2.0)]


def test_the_percentile_comes_from_the_window_after_the_fallback() -> None:
    stage = ScatterStage(SHARDS[:1], deadline=1.0, hedge_after=0.3, hedge_percentile=90, min_samples=10)
    for i in range(10):
        effect = fetch_of(stage)
        assert effect.hedge_after == 0.3  # the fallback while the window fills
        answer(effect, ok(effect, 0, leaf(), elapsed=0.01 * (i + 1)))
    assert fetch_of(stage).hedge_after == pytest.approx(0.09)  # p90 of 10..100 ms
    window = LatencyWindow(size=4, min_samples=2)
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        window.add(value)
    assert len(window) == 4
    assert window.percentile(100) == 6.0
    assert window.percentile(1) == 3.0


def test_the_hedge_counts_reach_the_metrics() -> None:
    stage = ScatterStage(SHARDS, deadline=1.0, hedge_after=0.02, hedge_max_percent=100)
    effect = fetch_of(stage)
    answer(
        effect,
        ok(effect, 0, leaf(), elapsed=0.03, hedged=True),
        ok(effect, 1, leaf(), elapsed=0.03),  # hedged perhaps, and the hedge lost
        ok(effect, 2, leaf(), elapsed=0.01),
    )
    stats = {(s.name, s.labels): s.value for s in stage.stats()}
    assert stats["distpat_scatter_hedges", (("stage", "scatter"), ("result", "won"))] == 1
    assert stats["distpat_scatter_hedges", (("stage", "scatter"), ("result", "lost"))] == 1
    assert stats["distpat_scatter_cancelled", (("stage", "scatter"),)] == 2
    count = stats["distpat_scatter_shard_seconds_count", (("stage", "scatter"), ("shard", "0"))]
    assert count == 1


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0, 50),
    st.lists(st.tuples(st.booleans(), st.floats(0, 0.1), st.booleans()), min_size=1, max_size=60),
)
def test_the_hedges_never_pass_the_budget(percent: float, fetches: list[tuple[bool, float, bool]]) -> None:
    """A carrier that hedges every slow shard it may: the hedges sent stay within P% of the
    sub-requests sent, whatever answers came back (and whether ``then`` was called at all)."""
    stage = ScatterStage(SHARDS, deadline=1.0, hedge_after=0.02, hedge_max_percent=percent)
    sent = hedges = 0
    for slow_first, elapsed, delivered in fetches:
        effect = fetch_of(stage)
        sent += len(effect.requests)
        slow = [i for i, s in enumerate(SHARDS) if len(s[1]) > 1 and (slow_first or elapsed >= 0.02)]
        used = min(effect.hedge_max, len(slow))
        hedges += used
        assert hedges <= sent * percent / 100 + 1e-9
        if delivered:
            results = [
                ok(effect, i, leaf(), elapsed=0.05 if i in slow else 0.01, hedged=i in slow[:used])
                for i in range(len(SHARDS))
            ]
            answer(effect, *results)
        assert hedges <= stage.charged  # the charge stays an upper bound of the hedges sent


def test_distpat_scatter_configuration(tmp_path: Any) -> None:
    config, _ = build_scatter_config(
        {
            "listen": "127.0.0.1:0",
            "leaf": ["http://127.0.0.1:9001,http://127.0.0.1:9002", "http://127.0.0.1:9003"],
            "hedge_after": "p95",
            "need": "2",
        }
    )
    assert config.pools == (
        ("shard-0", ("http://127.0.0.1:9001", "http://127.0.0.1:9002")),
        ("shard-1", ("http://127.0.0.1:9003",)),
    )
    (stage,) = config.stages
    assert isinstance(stage, ScatterStage)
    assert (stage.hedge_percentile, stage.need, stage.shards[0].order) == (
        95,
        2,
        ("127.0.0.1:9001", "127.0.0.1:9002"),
    )
    for flags, message in [
        ({"leaf": ["http://127.0.0.1:9001"], "need": "2"}, "need 2"),
        ({"leaf": ["ftp://x"]}, "only http://"),
        ({"leaf": ["http://127.0.0.1:1"], "hedge_after": "p100"}, "pNN"),
        ({}, "no leaf"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_scatter_config({"listen": "127.0.0.1:0", **flags})
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        'listen = "127.0.0.1:0"\n[pools.extra]\nupstreams = ["http://127.0.0.1:9009"]\n'
        '[[stage]]\nkind = "scatter"\nname = "root"\n'
        'shards = [["http://127.0.0.1:9001", "http://127.0.0.1:9002"], "extra"]\n'
        'deadline = 250\nhedge_after = "20ms"\nneed = 1\nmerge = "search"\n'
    )
    config, _ = load_pipeline(str(pipeline))
    assert dict(config.pools)["root-shard-0"] == ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
    (stage,) = config.stages
    assert isinstance(stage, ScatterStage)
    assert (stage.deadline, stage.hedge_after, [s.pool for s in stage.shards]) == (
        0.25,
        0.02,
        ["root-shard-0", "extra"],
    )
    pipeline.write_text('listen = "127.0.0.1:0"\n[[stage]]\nkind = "scatter"\nshards = [[1]]\n')
    with pytest.raises(ConfigError, match=r"shards\[0\]"):
        load_pipeline(str(pipeline))
