"""The engine's one-pass forwarding equals the general rules of core/http.py, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.forward import (
    MEMO_NAME_BYTES,
    MEMO_NAMES,
    RequestForwarder,
    forward_request,
    forward_response,
)
from distpat.core.http import (
    BodyKind,
    Headers,
    forward_request_headers,
    forward_response_headers,
    request_framing,
    request_head,
    response_framing,
    response_head,
)
from distpat.errors import RemoteProtocolError

NAMES = [
    b"Host",
    b"host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Keep-Alive",
    b"TE",
    b"Upgrade",
    b"Proxy-Authorization",
    b"X-Forwarded-For",
    b"x-forwarded-proto",
    b"X-Forwarded-Host",
    b"Via",
    b"Forwarded",
    b"Expect",
    b"Accept",
    b"Cookie",
    b"X-Custom",
    b"Trailer",
    b"Proxy-Connection",
    b"X_Custom",
    b"X-Client_Cert",
    b"x_forwarded_for",
]
VALUES = [
    b"",
    b" ",
    b"1",
    b"5",
    b"05",
    b"5, 5",
    b"-1",
    b"chunked",
    b"gzip, chunked",
    b"chunked, chunked",
    b"close",
    b"keep-alive",
    b"keep-alive, TE",
    b"X-Custom",
    b"100-continue",
    b"a, b",
    b" 10.0.0.1 ",
    b"1.1 proxy",
    b"for=1.2.3.4",
    b"example.test",
    b"text/plain",
    b"007",
    b"00",
    b"0",
    b"010, 10",
    b"h:8080",
    b"[::1]:80",
    b"[2001:db8::1]",
    b"a@b",
    b"a,b",
    b"a b",
    b"a/b",
    b"a\\b",
    b"a:b:c",
    b"[::1",
    b"h:",
    b"h:123456",
]
TARGETS = [b"/p?q", b"/", b"*", b"http://h/x", b"HTTPS://[::1]:8443?q"]
fields = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=8)


class Refused:
    """What a call that raised RemoteProtocolError returned, for comparing outcomes."""

    def __init__(self, status: int) -> None:
        self.status = status

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Refused) and other.status == self.status

    def __repr__(self) -> str:
        return f"Refused({self.status})"


def outcome(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except RemoteProtocolError as exc:
        return Refused(exc.status)


# A sidecar's: a client-certificate field always replaced, a response field always set.
DROP_REQUEST = frozenset({b"x-custom"})
EXTRA_REQUEST = ((b"X-Custom", b"CN=client"),)
DROP_RESPONSE = frozenset({b"x-custom"})
EXTRA_RESPONSE = ((b"X-Custom", b"max-age=60"),)


def reference_request(  # type: ignore[no-untyped-def]
    headers: Headers,
    http10: bool,
    forwarded: bool,
    sidecar: bool,
    underscores: bool = False,
    target: bytes = b"/p?q",
):
    if not http10 and not any(name.lower() == b"host" for name, _ in headers):
        raise RemoteProtocolError("no Host", status=400)
    framing = request_framing(headers, version=(1, 0) if http10 else (1, 1))
    kept: Headers = []
    expect = False
    for name, value in headers:
        if sidecar and name.lower() in DROP_REQUEST:
            continue
        if not underscores and b"_" in name:
            continue
        if name.lower() == b"expect":
            if value.strip(b" \t").lower() != b"100-continue":
                raise RemoteProtocolError("expectation", status=417)
            expect = True
            continue
        kept.append((name, value))
    out = forward_request_headers(
        kept, client_addr="10.9.8.7", scheme="https", via=b"1.1 t", forwarded=forwarded
    )
    if sidecar:
        out.extend(EXTRA_REQUEST)
    if framing.kind is BodyKind.CHUNKED:
        out.append((b"Transfer-Encoding", b"chunked"))
    return framing, request_head(b"POST", target, out), expect


@given(
    headers=fields,
    http10=st.booleans(),
    forwarded=st.booleans(),
    sidecar=st.booleans(),
    underscores=st.booleans(),
    target=st.sampled_from(TARGETS),
)
def test_forward_request_matches_the_general_rules(
    headers: Headers, http10: bool, forwarded: bool, sidecar: bool, underscores: bool, target: bytes
) -> None:
    fast = outcome(
        lambda: forward_request(
            b"POST",
            target,
            headers,
            http10=http10,
            client_addr="10.9.8.7",
            scheme="https",
            via=b"1.1 t",
            forwarded=forwarded,
            drop=DROP_REQUEST if sidecar else frozenset(),
            extra=EXTRA_REQUEST if sidecar else (),
            underscores=underscores,
        )
    )
    if fast is None:  # left to the general path: a Connection option names another field, or
        assert target[:1] != b"/" or any(n.lower() == b"connection" for n, _ in headers)  # not origin-form
        return
    expected = outcome(lambda: reference_request(headers, http10, forwarded, sidecar, underscores, target))
    if isinstance(expected, Refused):
        # both refuse; the status may differ only where two problems meet (417 vs 400)
        assert isinstance(fast, Refused)
        return
    assert not isinstance(fast, Refused), fast
    framing, head, expect = expected
    assert fast == (framing.kind, -1 if framing.length is None else framing.length, head, expect)


def reference_response(  # type: ignore[no-untyped-def]
    method: bytes, status: int, headers: Headers, http10: bool, keep_alive: bool, sidecar: bool
):
    framing = response_framing(method, status, headers)
    out = forward_response_headers(headers, via=b"1.1 t")
    if sidecar:
        out = [(n, v) for n, v in out if n.lower() not in DROP_RESPONSE]
        out.extend(EXTRA_RESPONSE)
    rechunk, close = False, not keep_alive
    if framing.kind in (BodyKind.CHUNKED, BodyKind.UNTIL_CLOSE):
        out = [(n, v) for n, v in out if n.lower() != b"content-length"]
        codings = [
            c.strip(b" \t")
            for n, v in headers
            if n.lower() == b"transfer-encoding"
            for c in v.split(b",")
            if c.strip(b" \t")
        ]
        if codings and codings[-1].lower() == b"chunked":
            codings.pop()
        other = b", ".join(codings)
        if http10:
            close = True
            if other:
                out.append((b"Content-Encoding", other))
        else:
            rechunk = True
            out.append((b"Transfer-Encoding", other + b", chunked" if other else b"chunked"))
    if close:
        out.append((b"Connection", b"close"))
    elif http10:
        out.append((b"Connection", b"keep-alive"))
    return framing, response_head(status, out), rechunk, close


@given(
    headers=fields,
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"CONNECT"]),
    status=st.sampled_from([100, 200, 204, 206, 301, 304, 404, 500, 599]),
    http10=st.booleans(),
    keep_alive=st.booleans(),
    sidecar=st.booleans(),
)
def test_forward_response_matches_the_general_rules(
    headers: Headers, method: bytes, status: int, http10: bool, keep_alive: bool, sidecar: bool
) -> None:
    fast = outcome(
        lambda: forward_response(
            method,
            status,
            headers,
            via=b"1.1 t",
            http10=http10,
            keep_alive=keep_alive,
            drop=DROP_RESPONSE if sidecar else frozenset(),
            extra=EXTRA_RESPONSE if sidecar else (),
        )
    )
    if fast is None:
        assert any(n.lower() == b"connection" for n, _ in headers)
        return
    expected = outcome(lambda: reference_response(method, status, headers, http10, keep_alive, sidecar))
    if isinstance(fast, Refused):
        assert fast == expected
        return
    framing, head, rechunk, close = expected
    assert fast == (framing.kind, head, rechunk, close)


def test_the_common_cases_take_the_fast_path() -> None:
    req = forward_request(
        b"GET",
        b"/",
        [(b"Host", b"h"), (b"Connection", b"keep-alive")],
        http10=False,
        client_addr="127.0.0.1",
        scheme="http",
        via=b"1.1 distpat",
    )
    assert req is not None
    kind, _, head, _ = req
    assert kind is BodyKind.NONE
    assert head == (
        b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.1 distpat\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
    )
    resp = forward_response(
        b"GET",
        200,
        [(b"Content-Length", b"2"), (b"Connection", b"keep-alive")],
        via=b"1.1 distpat",
        http10=False,
        keep_alive=True,
    )
    assert resp is not None
    assert resp[1] == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 distpat\r\n\r\n"
    assert (
        forward_request(
            b"GET",
            b"/",
            [(b"Host", b"h"), (b"Connection", b"X-Secret"), (b"X-Secret", b"1")],
            http10=False,
            client_addr="a",
            scheme="http",
            via=b"v",
        )
        is None
    )


@pytest.mark.parametrize("value", [b"100-continue", b" 100-Continue "])
def test_expect_continue_is_taken_out(value: bytes) -> None:
    req = forward_request(
        b"POST",
        b"/",
        [(b"Host", b"h"), (b"Expect", value), (b"Content-Length", b"1")],
        http10=False,
        client_addr="a",
        scheme="http",
        via=b"v",
    )
    assert req is not None
    _, _, head, expect = req
    assert expect
    assert b"expect" not in head.lower()


def test_the_name_memo_is_bounded_and_never_changes_an_answer() -> None:
    forwarder = RequestForwarder(client_addr="10.0.0.1", scheme="http", via=b"1.1 t")
    table = forwarder._names
    known = len(table.lower)
    for i in range(MEMO_NAMES + 500):
        name = b"X-Name-%d" % i
        out = forwarder.forward(
            b"GET", b"/", [(b"Host", b"h"), (name, b"v"), (b"CONNECTION", b"close")], False
        )
        assert out is not None
        assert name + b": v\r\n" in out[2]
        assert b"CONNECTION" not in out[2]
    long_name = b"X-" + b"a" * MEMO_NAME_BYTES
    assert forwarder.forward(b"GET", b"/", [(b"Host", b"h"), (long_name, b"v")], False) is not None
    assert len(table.seen) <= known + MEMO_NAMES
    assert long_name not in table.seen
