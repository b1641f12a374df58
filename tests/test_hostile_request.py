"""Hostile requests through the proxy engine: each class of input drawn by hypothesis, checking both
what the client got and what the upstream received (issue 10, "Hostile input")."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.httpkit import Backend, RawClient, Response, exchange, running_proxy

few = settings(max_examples=8, deadline=None)


def proxy(url: str, **overrides: object) -> contextlib.AbstractAsyncContextManager[Any]:
    return running_proxy(url, **overrides)


async def one(port: int, raw: bytes) -> Response:
    [response] = await exchange(port, raw, timeout=10.0)
    return response


# -- 1. Content-Length is forwarded in canonical decimal ---------------------------------------------


# llhttp itself refuses a Content-Length list or a repeated field (400); core/http's own handling of
# those forms (one canonical field) is tested in tests/test_hostile_core.py.
@few
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 6), st.booleans()), min_size=1, max_size=6))
def test_content_length_is_forwarded_canonical(cases: list[tuple[int, int, bool]]) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url) as p:
            for length, zeros, general in cases:
                written = b"0" * zeros + b"%d" % length
                fields = b"Content-Length: %s\r\n" % written
                if general:  # a Connection option naming a field leaves the fast path
                    fields += b"Connection: X-Opt\r\nX-Opt: 1\r\n"
                body = b"x" * length
                r = await one(p.port, b"POST /u HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n" + body)
                assert r.status == 200, r
                assert r.body == b"POST /u %d" % length
                received = backend.requests[-1]
                assert [v for n, v in received.headers if n.lower() == b"content-length"] == [b"%d" % length]
                assert received.body == body

    asyncio.run(run())


# -- 3. Host values and absolute-form targets ------------------------------------------------------------

reg_names = st.from_regex(rb"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True)
ports = st.integers(1, 65535).map(lambda n: b":%d" % n)
ipv6 = st.sampled_from([b"[::1]", b"[2001:db8::7]", b"[fe80::1:2]", b"[::ffff:192.0.2.1]"])
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: b"%d.%d.%d.%d" % t)
valid_hosts = st.tuples(st.one_of(reg_names, ipv4, ipv6), st.one_of(st.just(b""), ports)).map(b"".join)
# Each breaks uri-host[:port] wherever it is put.
BREAKERS = [b"@", b",", b" ", b"/", b"\\", b"[", b"]", b'"', b"<", b"%zz", b"?", b"#", b"|", b"^"]


def without_port(host: bytes) -> bytes:
    return host[: host.index(b"]") + 1] if host.startswith(b"[") else host.split(b":")[0]


@st.composite
def invalid_hosts(draw: st.DrawFn) -> bytes:
    host = draw(valid_hosts)
    base = without_port(host)
    kind = draw(st.sampled_from(["insert", "userinfo", "two-colons", "empty-port", "unclosed", "long-port"]))
    if kind == "insert":
        at = draw(st.integers(0, len(host)))
        bad = host[:at] + draw(st.sampled_from(BREAKERS)) + host[at:]
        return bad if bad.strip(b" \t") == bad else b"a" + bad + b"z"  # OWS around a value is trimmed
    if kind == "userinfo":
        return b"user:pass@" + host
    if kind == "two-colons":
        return base.strip(b"[]") + b":80" if base.startswith(b"[") else base + b":80:81"
    if kind == "empty-port":
        return base + b":"
    if kind == "unclosed":
        return b"[::1" + draw(st.sampled_from([b"", b":80"]))
    return base + b":123456"


@few
@given(st.lists(invalid_hosts(), min_size=1, max_size=8))
def test_invalid_host_values_are_refused_and_never_forwarded(hosts: list[bytes]) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url) as p:
            for host in hosts:
                for target in (b"/", b"http://good.test/"):  # the fast path and the general one
                    r = await one(p.port, b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host))
                    assert r.status == 400, (host, r)
                    assert b"Host" in r.body or b"authority" in r.body or b"malformed" in r.body, r.body
            assert backend.requests == []

    asyncio.run(run())


@few
@given(st.lists(valid_hosts, min_size=1, max_size=8))
def test_valid_host_values_reach_the_upstream_and_x_forwarded_host(hosts: list[bytes]) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url) as p:
            for host in hosts:
                r = await one(p.port, b"GET /h HTTP/1.1\r\nHost: %s\r\nX-Forwarded-Host: evil\r\n\r\n" % host)
                assert r.status == 200, (host, r)
                received = backend.requests[-1]
                assert received.header(b"host") == host
                assert received.header(b"x-forwarded-host") == host

    asyncio.run(run())


paths = st.from_regex(rb"(/[a-z0-9._~-]{0,8}){0,3}(\?[a-z0-9=&]{0,10})?", fullmatch=True)


@few
@given(
    st.lists(
        st.tuples(st.sampled_from([b"http", b"HTTP", b"https"]), valid_hosts, paths, st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_an_absolute_target_is_forwarded_in_origin_form_with_its_authority_as_host(
    cases: list[tuple[bytes, bytes, bytes, bool]],
) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url) as p:
            for scheme, authority, path, http10 in cases:
                target = scheme + b"://" + authority + path
                version = b"1.0" if http10 else b"1.1"
                host_line = b"" if http10 else b"Host: other.test\r\n"
                raw = b"GET %s HTTP/%s\r\n%sX-Forwarded-Host: evil\r\n\r\n" % (target, version, host_line)
                r = await one(p.port, raw)
                assert r.status == 200, (target, r)
                origin = path if path.startswith(b"/") else b"/" + path
                assert r.body == b"GET %s 0" % origin
                received = backend.requests[-1]
                assert received.target == origin
                assert [v for n, v in received.headers if n.lower() == b"host"] == [authority]
                assert received.header(b"x-forwarded-host") == authority

    asyncio.run(run())


async def test_absolute_targets_with_userinfo_or_another_scheme_are_refused() -> None:
    async with Backend() as backend, proxy(backend.url) as p:
        for target in (b"http://u:p@h/", b"ftp://h/", b"http:///x", b"http://h,i/", b"h/x"):
            r = await one(p.port, b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target)
            assert r.status == 400, (target, r)
        assert backend.requests == []


# -- 4. HTTP versions -----------------------------------------------------------------------------------


@few
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=10))
def test_versions_other_than_1_0_and_1_1_get_505(versions: list[tuple[int, int]]) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url) as p:
            for major, minor in versions:
                r = await one(p.port, b"GET / HTTP/%d.%d\r\nHost: h\r\n\r\n" % (major, minor))
                if (major, minor) in ((1, 0), (1, 1)):
                    assert r.status == 200
                else:
                    assert r.status == 505, (major, minor, r)
                    assert b"HTTP/%d.%d is not supported" % (major, minor) in r.body
            assert len(backend.requests) == sum(v in ((1, 0), (1, 1)) for v in versions)

    asyncio.run(run())


async def test_malformed_versions_get_400() -> None:
    async with Backend() as backend, proxy(backend.url) as p:
        for version in (b"HTTP/1.10", b"HTTP/1.01", b"HTTP/01.1", b"HTTP/1", b"HTTP/x.y", b"HTTPS/1.1"):
            r = await one(p.port, b"GET / %s\r\nHost: h\r\n\r\n" % version)
            assert r.status == 400, (version, r)
        assert backend.requests == []


# -- 6. field names with underscores ---------------------------------------------------------------------

name_parts = st.from_regex(rb"[A-Za-z][A-Za-z0-9]{0,6}", fullmatch=True)


@st.composite
def underscore_names(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(name_parts, min_size=2, max_size=4))
    seps = [draw(st.sampled_from([b"-", b"_"])) for _ in parts[1:]]
    if b"_" not in seps:
        seps[draw(st.integers(0, len(seps) - 1))] = b"_"
    name = parts[0]
    for sep, part in zip(seps, parts[1:], strict=True):
        name += sep + part
    return draw(st.sampled_from([name, b"X_Client_Cert_Subject", b"X-Client-Cert_Subject", b"_", b"a_"]))


@few
@given(st.lists(underscore_names(), min_size=1, max_size=6, unique=True), st.booleans())
def test_fields_with_underscores_are_dropped_unless_enabled(names: list[bytes], keep: bool) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url, underscores_in_headers=keep) as p:
            fields = b"".join(b"%s: forged-%d\r\n" % (n, i) for i, n in enumerate(names))
            for target in (b"/", b"http://h/"):  # the fast path and the general one
                r = await one(p.port, b"GET %s HTTP/1.1\r\nHost: h\r\n%sX-Kept: 1\r\n\r\n" % (target, fields))
                assert r.status == 200
                received = backend.requests[-1]
                assert received.header(b"x-kept") == b"1"
                got = [(n, v) for n, v in received.headers if b"_" in n]
                if keep:
                    assert got == [(n, b"forged-%d" % i) for i, n in enumerate(names)]
                else:
                    assert got == []
                    assert not any(v.startswith(b"forged") for _, v in received.headers)

    asyncio.run(run())


# -- 2. chunk sizes and chunk extensions -----------------------------------------------------------------

CHUNKED_HEAD = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
MAX_BODY = 1000


@st.composite
def oversized_chunks(draw: st.DrawFn) -> tuple[bytes, tuple[int, ...]]:
    """A chunked body (not all sent) whose size line, or a part of it, is already refused."""
    before = draw(st.lists(st.integers(1, 100), max_size=3))
    sent = sum(before)
    kind = draw(st.sampled_from(["large", "huge", "overflow", "extension", "partial-extension", "digits"]))
    zeros = b"0" * draw(st.integers(0, 3))
    if kind == "large":  # past what the body may still hold
        line, status = zeros + b"%x" % (MAX_BODY - sent + draw(st.integers(1, 10**6))), 413
    elif kind == "huge":  # 2**63 and more, up to 16 hex digits
        line, status = b"%x" % draw(st.integers(1 << 63, (1 << 64) - 1)), 413
    elif kind == "overflow":  # more than 16 significant hex digits: 413 once the digits so far say
        line, status = b"1" + b"0" * draw(st.integers(16, 40)), 413  # too much, else llhttp's 400
    elif kind == "extension":
        line, status = b"5;" + b"e" * draw(st.integers(4096, 20000)), 400
    elif kind == "partial-extension":  # no CRLF yet: refused while it is still arriving
        line, status = b"5;x=" + b"v" * draw(st.integers(4100, 20000)), 400
    else:  # the digits so far already say too much, before the line ends
        line, status = b"ffffff", 413
    body = b"".join(b"%x\r\n%s\r\n" % (n, b"d" * n) for n in before)
    end = b"" if kind in ("partial-extension", "digits") else b"\r\n"
    return body + line + end, (status, 400) if kind == "overflow" else (status,)


@few
@given(st.lists(oversized_chunks(), min_size=1, max_size=6), st.integers(1, 50))
# Found by hypothesis: a read that ends one chunk and holds the whole over-long size line of the next
# was searched back past that line (as if it were a trailer field) to the chunk's data, 'd', a size.
@example(cases=[(b"1\r\nd\r\n5;" + b"e" * 4096 + b"\r\n", (400,))], split=1)
def test_oversized_chunk_lines_are_refused_at_once(
    cases: list[tuple[bytes, tuple[int, ...]]], split: int
) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url, max_body_bytes=MAX_BODY) as p:
            for body, status in cases:
                client = await RawClient.connect(p.port)
                try:
                    raw = CHUNKED_HEAD + body
                    await client.send(raw[: len(CHUNKED_HEAD) + split])  # in two reads, if the proxy is quick
                    await asyncio.sleep(0.01)
                    await client.send(raw[len(CHUNKED_HEAD) + split :])
                    [r] = await client.read_responses(1, timeout=10.0)  # no more is sent: answered at once
                    assert r.status in status, (body[-80:], r)
                    assert b"chunk" in r.body.lower()
                finally:
                    await client.close()
            for received in backend.requests:  # nothing past the refused line reached the upstream whole
                assert received.target == b"/c"

    asyncio.run(run())


@few
@given(
    st.lists(st.tuples(st.integers(1, 200), st.integers(0, 3), st.integers(0, 3000)), min_size=1, max_size=6),
    st.integers(1, 64),
)
def test_chunks_within_the_limits_pass(chunks: list[tuple[int, int, int]], piece: int) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url, max_body_bytes=MAX_BODY * 2) as p:
            body = b"".join(
                b"0" * zeros + b"%x;e=%s\r\n%s\r\n" % (n, b"v" * ext, b"d" * n) for n, zeros, ext in chunks
            )
            raw = CHUNKED_HEAD + body + b"0;last=1\r\nX-Trailer: t\r\n\r\n"
            client = await RawClient.connect(p.port)
            try:
                for at in range(0, len(raw), piece * 97):  # many reads, cut anywhere
                    await client.send(raw[at : at + piece * 97])
                [r] = await client.read_responses(1, timeout=10.0)
            finally:
                await client.close()
            total = sum(n for n, _, _ in chunks)
            if total > MAX_BODY * 2:
                assert r.status == 413
            else:
                assert r.status == 200, r
                assert backend.requests[-1].body == b"d" * total

    asyncio.run(run())


# -- a request head that never ends ----------------------------------------------------------------------


@few
@given(st.sampled_from([b"X-Long: ", b"X-Long", b"GET /", b"X-A: 1\r\nX-B: "]), st.integers(1, 4))
def test_an_endless_head_is_refused_with_431_or_414_before_the_header_timeout(start: bytes, mib: int) -> None:
    async def run() -> None:
        async with Backend() as backend, proxy(backend.url, max_header_bytes=8192, header_timeout=60.0) as p:
            client = await RawClient.connect(p.port)
            try:
                head = start if start.startswith(b"GET") else b"GET / HTTP/1.1\r\nHost: h\r\n" + start
                await client.send(head)
                with contextlib.suppress(ConnectionError):  # refused while it is still sending
                    for _ in range(mib * 16):
                        await client.send(b"a" * 65536)
                # answered long before the header timeout, with nothing of the head left to come
                [r] = await client.read_responses(1, timeout=10.0)
                assert r.status == (414 if start == b"GET /" else 431), r  # a target too long: 414
            finally:
                await client.close()
            assert backend.requests == []

    asyncio.run(run())
