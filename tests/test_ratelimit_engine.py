"""The rate-limit stage in the engine over real loopback sockets (the command comes next)."""

from __future__ import annotations

from distpat.core.keys import KeySource
from distpat.core.limiter import Limit
from distpat.core.ratelimit_stage import LimitRule, RateLimitStage
from distpat.net.proxy import ProxyConfig, ProxyServer
from tests.httpkit import Backend, exchange


async def test_the_burst_is_forwarded_the_rest_refused_with_the_draft_fields_on_every_answer() -> None:
    stage = RateLimitStage([LimitRule(Limit.nodelay("per-ip", 0.1, burst=1), KeySource.parse("ip"))])
    async with Backend() as origin:
        server = ProxyServer(ProxyConfig(listen=("127.0.0.1", 0), upstreams=(origin.url,), stages=(stage,)))
        await server.start()
        try:
            answers = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 3, count=3)
        finally:
            await server.shutdown(1)
    assert [a.status for a in answers] == [200, 200, 429]
    assert len(origin.requests) == 2
    assert all(a.header(b"ratelimit-policy") == b'"per-ip";q=2;w=20' for a in answers)
    assert [a.header(b"ratelimit") for a in answers] == [
        b'"per-ip";r=1;t=10',
        b'"per-ip";r=0;t=20',
        b'"per-ip";r=0;t=20',
    ]
    assert answers[2].header(b"retry-after") == b"10"
