"""The search leaf: its options, its corpus, its shard of it, and its answers in a real server."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from distpat.config.leaf import build_leaf_config
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyServer
from tests.httpkit import exchange


def test_leaves_cover_the_corpus_once_and_score_alike(tmp_path: Path) -> None:
    words = ["raft", "paxos", "cache", "shard", "ring", "log", "quorum"]
    for i in range(30):
        (tmp_path / f"d{i:02d}.txt").write_text(" ".join(words[(i * j) % 7] for j in range(1, 9)))
    (tmp_path / "binary.bin").write_bytes(b"\0\1\2")
    whole, _ = build_leaf_config({"listen": "127.0.0.1:1", "corpus": str(tmp_path)})
    parts = [
        build_leaf_config({"listen": "127.0.0.1:1", "corpus": str(tmp_path), "shard": f"{i}/3"})[0]
        for i in range(3)
    ]
    sizes = [len(p.stages[0].index) for p in parts]  # type: ignore[attr-defined]
    assert sum(sizes) == len(whole.stages[0].index) == 30  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="no such directory"):
        build_leaf_config({"listen": "127.0.0.1:1", "corpus": str(tmp_path / "missing")})


async def test_a_leaf_answers_the_contract_json(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("raft leader election raft")
    (tmp_path / "b.txt").write_text("paxos quorum")
    config, _ = build_leaf_config({"listen": "127.0.0.1:0", "corpus": str(tmp_path)})
    server = ProxyServer(replace(config, listen=("127.0.0.1", 0)))
    await server.start()
    try:
        raw = (
            b"GET /search?q=raft&k=5 HTTP/1.1\r\nHost: l\r\n\r\n"
            b"GET /search?k=5 HTTP/1.1\r\nHost: l\r\n\r\n"
            b"GET /stats HTTP/1.1\r\nHost: l\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: l\r\n\r\n"
            b"POST /search HTTP/1.1\r\nHost: l\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        found, no_q, stats, missing, post = await exchange(server.port, raw, count=5)
    finally:
        await server.shutdown(1)
    body = json.loads(found.body)
    assert [h["id"] for h in body["hits"]] == ["a.txt"]
    assert body["hits"][0]["score"] > 0
    assert "raft" in body["hits"][0]["snippet"]
    assert (body["shard"], body["docs"]) == ("0/1", 2)
    assert (no_q.status, json.loads(no_q.body)["error"]) == (400, "give the query as q=WORDS")
    assert json.loads(stats.body) == {"shard": "0/1", "docs": 2, "terms": 5}
    assert (post.status, missing.status) == (405, 404)
