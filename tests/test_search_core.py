"""The search core: tokens, shards, BM25 with global statistics, and the root's merge."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpat.core.search import CorpusStats, Hit, Index, merge_topk, parse_shard, shard_of, tokenize
from distpat.errors import ConfigError

WORDS = ["raft", "paxos", "shard", "cache", "replica", "leader", "quorum", "hash", "ring", "log"]

documents = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join), min_size=1, max_size=40
).map(lambda texts: [(f"doc{i:03d}.txt", text) for i, text in enumerate(texts)])
queries = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(documents, queries, st.integers(1, 5), st.integers(1, 12))
def test_the_merged_top_k_of_the_shards_is_one_index_over_the_whole_corpus(
    docs: list[tuple[str, str]], query: str, shards: int, k: int
) -> None:
    stats = CorpusStats.of(docs)
    whole = Index(docs, stats).search(query, k)
    parts = [Index([d for d in docs if shard_of(d[0], shards) == i], stats) for i in range(shards)]
    merged = merge_topk([part.search(query, k) for part in parts], k)
    assert [(h.id, h.score) for h in merged] == [(h.id, h.score) for h in whole]
    assert sum(len(p) for p in parts) == len(docs)


def test_bm25_by_hand() -> None:
    docs = [("a", "raft raft log"), ("b", "paxos log"), ("c", "cache")]
    stats = CorpusStats.of(docs)
    assert (stats.documents, stats.average_length, stats.frequencies["log"]) == (3, 2.0, 2)
    [first, second] = Index(docs, stats).search("raft log", 10)
    idf_raft = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    idf_log = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    norm_a = 1.2 * (1 - 0.75 + 0.75 * 3 / 2.0)
    expected_a = idf_raft * 2 * 2.2 / (2 + norm_a) + idf_log * 1 * 2.2 / (1 + norm_a)
    assert first.id == "a"
    assert first.score == pytest.approx(expected_a, rel=1e-12)
    assert second.id == "b"


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("Hello, World!", ["hello", "world"]),
        ("raft-log v2.0", ["raft", "log", "v2", "0"]),
        ("Überraschung ÉCOLE", ["überraschung", "école"]),
        ("", []),
        ("   ", []),
    ],
)
def test_tokens(text: str, terms: list[str]) -> None:
    assert tokenize(text) == terms


@given(st.text(max_size=40), st.integers(1, 64))
def test_shards_are_stable_and_in_range(path: str, n: int) -> None:
    assert 0 <= shard_of(path, n) < n
    assert shard_of(path, n) == shard_of(path, n)


def test_parse_shard() -> None:
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "-1/2", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="give I/N"):
            parse_shard(bad)


def test_merge_keeps_one_hit_per_document_and_breaks_ties_by_id() -> None:
    merged = merge_topk([[Hit("b", 1.0), Hit("a", 1.0)], [Hit("b", 2.0), Hit("c", 0.5)]], 3)
    assert [(h.id, h.score) for h in merged] == [("b", 2.0), ("a", 1.0), ("c", 0.5)]
