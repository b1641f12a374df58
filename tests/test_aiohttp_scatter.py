"""distpat.aiohttp.scatter_handler: the scatter/gather root inside an aiohttp application."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from distpat.aiohttp import client_context, scatter_handler
from distpat.errors import ConfigError
from tests.httpkit import Backend, Reply
from tests.httpkit import Request as BackendRequest
from tests.nutcracker import free_ports

HOST = "127.0.0.1"


def leaf(*hits: tuple[str, float]) -> Any:
    async def handler(request: BackendRequest) -> Reply:
        body = {"hits": [{"id": i, "score": s, "snippet": ""} for i, s in hits]}
        return Reply(body=json.dumps(body).encode(), headers=[(b"Content-Type", b"application/json")])

    return handler


async def test_the_handler_merges_every_shard_and_says_when_one_is_missing() -> None:
    [dead] = free_ports(1)
    async with Backend(leaf(("a", 2.0), ("c", 0.5))) as one, Backend(leaf(("b", 1.0))) as two:
        app = web.Application()
        app.cleanup_ctx.append(client_context())
        app.router.add_get("/search", scatter_handler(leaves=[[one.url], two.url], deadline=2.0))
        app.router.add_get(
            "/partial",
            scatter_handler(leaves=[one.url, f"http://{HOST}:{dead}"], need="all", path="/partial"),
        )
        async with TestClient(TestServer(app, host=HOST)) as client:
            whole = await client.get("/search", params={"q": "raft", "k": "3"})
            body = await whole.json()
            partial = await client.get("/partial", params={"q": "raft"})
            partial_body = await partial.json()
            bad = await client.get("/search")
    assert whole.status == 200
    assert [h["id"] for h in body["hits"]] == ["a", "b", "c"]
    assert body["shards"] == {"total": 2, "ok": 2, "failed": 0, "timed_out": 0}
    assert body["partial"] is False
    assert partial.status == 502
    assert (partial_body["partial"], partial_body["shards"]["failed"]) == (True, 1)
    assert bad.status == 400


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="scatter_handler: give leaves"):
        scatter_handler(leaves=[])
    with pytest.raises(ConfigError):
        scatter_handler(leaves=["ftp://x"])
    with pytest.raises(ConfigError, match="scatter_handler"):
        scatter_handler(leaves=["http://127.0.0.1:1"], need=5)
