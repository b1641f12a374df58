"""distpat.core.http: framing, hop-by-hop fields, forwarding fields and head serialization.

Grouped by the RFC section each rule comes from. Heads and chunked bodies are checked by feeding
them to httptools (llhttp, the parser distpat's engine uses), whole and byte by byte, and the
framing rules are checked against llhttp's own reading of the same bytes.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.http import (
    HOP_BY_HOP,
    LAST_CHUNK,
    BodyKind,
    Framing,
    Headers,
    HttpVersion,
    chunk,
    connection_tokens,
    error_response,
    forward_request_headers,
    forward_response_headers,
    request_framing,
    request_head,
    response_framing,
    response_head,
    strip_hop_by_hop,
    wants_close,
)
from distpat.errors import DistpatError, LocalProtocolError, RemoteProtocolError

# --- an httptools harness ---------------------------------------------------------------------


@dataclass
class Message:
    method: bytes | None = None
    status: int | None = None
    url: bytes = b""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    complete: bool = False


class Recorder:
    """httptools callbacks that collect every message of a byte stream."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.messages.append(Message())

    def on_url(self, url: bytes) -> None:
        self.messages[-1].url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.messages[-1].headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        if isinstance(self.parser, httptools.HttpRequestParser):
            self.messages[-1].method = self.parser.get_method()
        else:
            self.messages[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.messages[-1].body += body

    def on_message_complete(self) -> None:
        self.messages[-1].complete = True


def parse(
    data: bytes, *, response: bool = False, bytewise: bool = False, until_error: bool = False
) -> list[Message]:
    """Every message httptools reads from ``data``, fed whole or one byte at a time.

    With ``until_error`` a parse error ends the stream instead of raising, and the messages
    read before it (the last possibly incomplete) are returned.
    """
    recorder = Recorder()
    parser = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(recorder)
    recorder.parser = parser
    try:
        if bytewise:
            for i in range(len(data)):
                parser.feed_data(data[i : i + 1])
        else:
            parser.feed_data(data)
    except httptools.HttpParserError:
        if not until_error:
            raise
    return recorder.messages


def names(headers: Headers) -> list[bytes]:
    return [name.lower() for name, _ in headers]


# --- RFC 9110 section 7.6.1: hop-by-hop fields --------------------------------------------------


def test_hop_by_hop_names() -> None:
    assert {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    } == HOP_BY_HOP
    assert all(name == name.lower() for name in HOP_BY_HOP)


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
@pytest.mark.parametrize("case", [bytes.lower, bytes.upper, bytes.title])
def test_every_hop_by_hop_field_is_stripped_in_any_case(name: bytes, case: object) -> None:
    assert callable(case)
    headers = [(b"Host", b"a"), (case(name), b"x"), (b"Accept", b"*/*")]
    assert strip_hop_by_hop(headers) == [(b"Host", b"a"), (b"Accept", b"*/*")]


def test_connection_options_name_fields_to_strip() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"x-secret", b"1"),
        (b"X-SECRET", b"2"),
        (b"X-Other", b"kept"),
    ]
    assert strip_hop_by_hop(headers) == [(b"Host", b"a"), (b"X-Other", b"kept")]


def test_every_connection_field_counts_and_tokens_are_case_and_space_insensitive() -> None:
    headers = [
        (b"connection", b"X-A"),
        (b"X-A", b"1"),
        (b"X-B", b"2"),
        (b"CONNECTION", b" ,\tx-b ,, X-C\t"),
        (b"x-c", b"3"),
        (b"X-D", b"4"),
    ]
    assert strip_hop_by_hop(headers) == [(b"X-D", b"4")]
    assert connection_tokens(headers) == {b"x-a", b"x-b", b"x-c"}


def test_strip_keeps_order_and_duplicates_and_returns_a_new_list() -> None:
    headers = [(b"Set-Cookie", b"a=1"), (b"TE", b"trailers"), (b"Set-Cookie", b"b=2"), (b"Vary", b"x")]
    out = strip_hop_by_hop(headers)
    assert out == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Vary", b"x")]
    clean = [(b"A", b"1")]
    assert strip_hop_by_hop(clean) == clean
    assert strip_hop_by_hop(clean) is not clean
    assert strip_hop_by_hop(()) == []


def test_connection_cannot_remove_content_length_or_host() -> None:
    # Dropping Content-Length would forward a body with nothing framing it (RFC 9110 7.6.1 forbids
    # the sender to name such fields, so distpat does not obey it).
    headers = [(b"Host", b"a"), (b"Content-Length", b"5"), (b"Connection", b"content-length, HOST, x")]
    assert strip_hop_by_hop(headers) == [(b"Host", b"a"), (b"Content-Length", b"5")]


def test_connection_tokens() -> None:
    assert connection_tokens([]) == frozenset()
    assert connection_tokens([(b"Connection", b"")]) == frozenset()
    assert connection_tokens([(b"Connection", b"Upgrade, Keep-Alive")]) == {b"upgrade", b"keep-alive"}
    assert connection_tokens([(b"X-Connection", b"close")]) == frozenset()


_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAME_POOL = [
    *(n.decode() for n in HOP_BY_HOP),
    "content-length",
    "host",
    "x-a",
    "x-b",
    "accept",
    "close",
]


@st.composite
def any_case(draw: st.DrawFn, text: str) -> bytes:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flips, strict=True)).encode()


field_names = st.one_of(
    st.sampled_from(_NAME_POOL).flatmap(any_case),
    st.text(alphabet=_TCHARS, min_size=1, max_size=8).map(str.encode),
)
ows = st.sampled_from([b"", b" ", b"\t", b" \t "])
connection_values = st.lists(st.tuples(ows, field_names, ows), max_size=4).map(
    lambda parts: b",".join(a + n + b for a, n, b in parts)
)
plain_values = st.binary(max_size=6).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
header_lists = st.lists(
    st.one_of(
        st.tuples(field_names, plain_values),
        st.tuples(st.sampled_from([b"Connection", b"connection", b"CONNECTION"]), connection_values),
    ),
    max_size=12,
)


@given(header_lists)
def test_strip_removes_exactly_the_hop_by_hop_fields_and_keeps_the_rest_in_order(headers: Headers) -> None:
    named = {
        token.strip(b" \t")
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.lower().split(b",")
    }
    removed = HOP_BY_HOP | (named - {b"content-length", b"host"})
    out = strip_hop_by_hop(headers)
    assert out == [h for h in headers if h[0].lower() not in removed]
    assert not any(name.lower() in HOP_BY_HOP for name, _ in out)
    assert not any(name.lower() in named - {b"content-length", b"host"} for name, _ in out)


# --- RFC 9112 section 9.3: persistence ----------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "close"),
    [
        ((1, 1), None, False),
        ((1, 1), b"close", True),
        ((1, 1), b"Close", True),
        ((1, 1), b"keep-alive", False),
        ((1, 1), b"Upgrade, close", True),
        ((1, 0), None, True),
        ((1, 0), b"keep-alive", False),
        ((1, 0), b"Keep-Alive", False),
        ((1, 0), b"keep-alive, close", True),
        ((1, 0), b"x-keep-alive", True),
        (b"1.1", None, False),
        (b"HTTP/1.1", None, False),
        ("1.1", None, False),  # what httptools' get_http_version() returns
        ("1.0", None, True),
        ("1.0", b"keep-alive", False),
        (b"1.0", None, True),
        (b"HTTP/1.0", b"keep-alive", False),
        (b"1.2", None, False),  # a higher minor version is read as 1.1 (RFC 9112 section 2.3)
        ((2, 0), None, False),
        ((0, 9), None, True),
        (b"garbage", None, True),
        (b"1.x", b"keep-alive", False),
        (b"", None, True),
    ],
)
def test_wants_close(version: HttpVersion, connection: bytes | None, close: bool) -> None:
    headers = [(b"Host", b"a")] if connection is None else [(b"Host", b"a"), (b"Connection", connection)]
    assert wants_close(version, headers) is close


def test_wants_close_reads_every_connection_field() -> None:
    headers = [(b"Connection", b"keep-alive"), (b"connection", b"CLOSE")]
    assert wants_close((1, 1), headers)
    assert wants_close((1, 0), headers)


# --- RFC 9112 sections 6.1-6.3: request framing -------------------------------------------------

TE = b"Transfer-Encoding"
CL = b"Content-Length"


def test_framing_value_invariants() -> None:
    assert Framing(BodyKind.LENGTH, 0).length == 0
    assert Framing(BodyKind.CHUNKED) == Framing(BodyKind.CHUNKED, None)
    with pytest.raises(LocalProtocolError, match="needs a length"):
        Framing(BodyKind.LENGTH)
    with pytest.raises(LocalProtocolError, match="needs a length"):
        Framing(BodyKind.LENGTH, -1)
    with pytest.raises(LocalProtocolError, match="takes no length"):
        Framing(BodyKind.NONE, 3)
    framing = Framing(BodyKind.NONE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        framing.kind = BodyKind.CHUNKED  # type: ignore[misc]
    assert not hasattr(framing, "__dict__")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], Framing(BodyKind.NONE)),
        ([(b"Host", b"a")], Framing(BodyKind.NONE)),
        ([(CL, b"5")], Framing(BodyKind.LENGTH, 5)),
        ([(CL, b"0")], Framing(BodyKind.LENGTH, 0)),
        ([(b"content-length", b"12")], Framing(BodyKind.LENGTH, 12)),
        ([(CL, b"005")], Framing(BodyKind.LENGTH, 5)),
        ([(CL, b"5 \t")], Framing(BodyKind.LENGTH, 5)),
        ([(CL, b"5, 5")], Framing(BodyKind.LENGTH, 5)),
        ([(CL, b"5,5,\t5")], Framing(BodyKind.LENGTH, 5)),
        ([(CL, b"5"), (b"X", b"y"), (CL, b"5")], Framing(BodyKind.LENGTH, 5)),
        ([(CL, b"05"), (CL, b"5")], Framing(BodyKind.LENGTH, 5)),
        ([(CL, b"9" * 18)], Framing(BodyKind.LENGTH, 10**18 - 1)),
        ([(TE, b"chunked")], Framing(BodyKind.CHUNKED)),
        ([(TE, b"Chunked")], Framing(BodyKind.CHUNKED)),
        ([(b"TRANSFER-ENCODING", b"CHUNKED")], Framing(BodyKind.CHUNKED)),
        ([(TE, b" chunked")], Framing(BodyKind.CHUNKED)),
        ([(TE, b"chunked \t")], Framing(BodyKind.CHUNKED)),
        ([(TE, b"\t chunked\t ")], Framing(BodyKind.CHUNKED)),
    ],
)
def test_request_framing_accepts(headers: Headers, expected: Framing) -> None:
    assert request_framing(headers) == expected


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        # CL together with TE: the classic CL.TE / TE.CL smuggling vector
        ([(TE, b"chunked"), (CL, b"5")], "both Transfer-Encoding and Content-Length"),
        ([(CL, b"0"), (b"transfer-encoding", b"chunked")], "both"),
        ([(TE, b"gzip"), (CL, b"5")], "both"),
        # any transfer coding other than exactly one chunked
        ([(TE, b"chunked, chunked")], "unsupported transfer coding"),
        ([(TE, b"chunked"), (TE, b"chunked")], "unsupported transfer coding"),
        ([(TE, b"gzip, chunked")], "unsupported transfer coding"),
        ([(TE, b"gzip"), (TE, b"chunked")], "unsupported transfer coding"),
        ([(TE, b"chunked, gzip")], "unsupported transfer coding"),
        ([(TE, b"identity")], "unsupported transfer coding"),
        ([(TE, b"gzip")], "unsupported transfer coding"),
        ([(TE, b"")], "unsupported transfer coding"),
        ([(TE, b"chunked,")], "unsupported transfer coding"),
        ([(TE, b", chunked")], "unsupported transfer coding"),
        ([(TE, b"chunked;q=1")], "unsupported transfer coding"),
        ([(TE, b"chunked\x0b")], "unsupported transfer coding"),
        ([(TE, b"\x0bchunked")], "unsupported transfer coding"),
        ([(TE, b"chunked\x0c")], "unsupported transfer coding"),
        ([(TE, b"chunked\r")], "unsupported transfer coding"),
        ([(TE, b"chunked\x00")], "unsupported transfer coding"),
        ([(TE, b"\xa0chunked")], "unsupported transfer coding"),
        ([(TE, b"chunk")], "unsupported transfer coding"),
        ([(TE, b"xchunked")], "unsupported transfer coding"),
        ([(TE, b"chunked-x")], "unsupported transfer coding"),
        ([(TE, b'"chunked"')], "unsupported transfer coding"),
        # Content-Length must be 1*DIGIT and agree with itself
        ([(CL, b"+5")], "invalid Content-Length"),
        ([(CL, b"-1")], "invalid Content-Length"),
        ([(CL, b"0x5")], "invalid Content-Length"),
        ([(CL, b"5 5")], "invalid Content-Length"),
        ([(CL, b"")], "invalid Content-Length"),
        ([(CL, b" ")], "invalid Content-Length"),
        ([(CL, b"5,")], "invalid Content-Length"),
        ([(CL, b",5")], "invalid Content-Length"),
        ([(CL, b"5,,5")], "invalid Content-Length"),
        ([(CL, b"1_0")], "invalid Content-Length"),
        ([(CL, b"5.0")], "invalid Content-Length"),
        ([(CL, b"1e3")], "invalid Content-Length"),
        ([(CL, b"\x0b5")], "invalid Content-Length"),
        ([(CL, "５".encode())], "invalid Content-Length"),  # FULLWIDTH DIGIT FIVE  # noqa: RUF001
        ([(CL, b"1,2")], "conflicting Content-Length"),
        ([(CL, b"5, 6")], "conflicting Content-Length"),
        ([(CL, b"5"), (CL, b"6")], "conflicting Content-Length"),
        ([(CL, b"5"), (CL, b"5, 6")], "conflicting Content-Length"),
        ([(CL, b"1" * 19)], "too large"),
        ([(CL, b"0" * 5 + b"1" * 19)], "too large"),
    ],
)
def test_request_framing_rejects_with_400(headers: Headers, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        request_framing(headers)
    assert info.value.status == 400


@pytest.mark.parametrize("version", [(1, 0), b"1.0", "1.0", b"HTTP/1.0", (0, 9)])
def test_transfer_encoding_in_an_http_1_0_request_is_refused(version: HttpVersion) -> None:
    # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
    with pytest.raises(RemoteProtocolError, match=r"HTTP/1\.0") as info:
        request_framing([(TE, b"chunked")], version=version)
    assert info.value.status == 400
    assert request_framing([(CL, b"3")], version=version) == Framing(BodyKind.LENGTH, 3)
    assert request_framing([(TE, b"chunked")], version=(1, 1)) == Framing(BodyKind.CHUNKED)


def test_remote_protocol_errors_are_value_errors_and_distpat_errors() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the builtin is the point
        request_framing([(CL, b"x")])
    with pytest.raises(DistpatError):
        request_framing([(CL, b"x")])


_TAIL = b"5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: n\r\n\r\n"
_TE_VALUES = [b"chunked", b"Chunked", b" chunked", b"chunked ", b"gzip, chunked", b"chunked, chunked", b""]
_CL_VALUES = [b"0", b"3", b"5", b"05", b"5, 5", b"+5", b"-1", b"0x5", b"5 5", b"", b"1,2", b"1" * 19]


def test_request_framing_never_disagrees_with_llhttp() -> None:
    """Every request with up to two framing fields from a vocabulary of smuggling vectors.

    Where both accept a request, llhttp ends its body exactly where the framing says. Where they
    differ, the stricter one is named: llhttp refuses repeated Content-Length values distpat
    accepts as one, and distpat refuses ``gzip, chunked``, which llhttp reads as chunked.
    """
    vocabulary = [(TE, v) for v in _TE_VALUES] + [(CL, v) for v in _CL_VALUES]
    compared = 0
    only_llhttp: list[Headers] = []
    only_distpat: list[Headers] = []
    for size in range(3):
        for combination in itertools.product(vocabulary, repeat=size):
            body_fields = list(combination)
            head = request_head(b"POST", b"/", [(b"Host", b"a"), *body_fields])
            try:
                framing: Framing | None = request_framing(body_fields)
            except RemoteProtocolError:
                framing = None
            # llhttp may stop at a later message (the tail is junk to some framings); the first counts.
            messages = parse(head + _TAIL, until_error=True)
            llhttp_accepts = bool(messages) and messages[0].complete
            if framing is None:
                if llhttp_accepts:
                    only_llhttp.append(body_fields)
                continue
            if not llhttp_accepts:
                only_distpat.append(body_fields)
                continue
            expected = {
                BodyKind.NONE: b"",
                BodyKind.CHUNKED: b"hello",
                BodyKind.LENGTH: _TAIL[: framing.length],
            }[framing.kind]
            assert messages[0].body == expected, body_fields
            compared += 1
    assert compared >= 9
    assert only_llhttp == [[(TE, b"gzip, chunked")]]
    for body_fields in only_distpat:
        values = [value for name, value in body_fields]
        assert all(name == CL for name, _ in body_fields)
        assert len(values) > 1 or b"," in values[0], body_fields


# --- RFC 9112 section 6.3: response framing -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [
        # no body whatever the fields say
        (b"HEAD", 200, [(CL, b"5")], Framing(BodyKind.NONE)),
        (b"HEAD", 200, [(TE, b"chunked")], Framing(BodyKind.NONE)),
        (b"HEAD", 404, [(CL, b"junk")], Framing(BodyKind.NONE)),
        (b"GET", 100, [(CL, b"5")], Framing(BodyKind.NONE)),
        (b"GET", 101, [(TE, b"chunked")], Framing(BodyKind.NONE)),
        (b"GET", 103, [], Framing(BodyKind.NONE)),
        (b"GET", 204, [(CL, b"5")], Framing(BodyKind.NONE)),
        (b"GET", 204, [(TE, b"chunked")], Framing(BodyKind.NONE)),
        (b"GET", 304, [(CL, b"5")], Framing(BodyKind.NONE)),
        (b"GET", 304, [(CL, b"-1")], Framing(BodyKind.NONE)),
        (b"CONNECT", 200, [(CL, b"5")], Framing(BodyKind.NONE)),
        (b"CONNECT", 299, [(TE, b"chunked")], Framing(BodyKind.NONE)),
        # CONNECT that failed has a body like any other response
        (b"CONNECT", 407, [(CL, b"5")], Framing(BodyKind.LENGTH, 5)),
        (b"CONNECT", 502, [], Framing(BodyKind.UNTIL_CLOSE)),
        # methods are case-sensitive: "head" is not HEAD
        (b"head", 200, [(CL, b"5")], Framing(BodyKind.LENGTH, 5)),
        # Transfer-Encoding
        (b"GET", 200, [(TE, b"chunked")], Framing(BodyKind.CHUNKED)),
        (b"GET", 200, [(b"transfer-encoding", b"CHUNKED ")], Framing(BodyKind.CHUNKED)),
        (b"GET", 200, [(TE, b"gzip, chunked")], Framing(BodyKind.CHUNKED)),
        (b"GET", 200, [(TE, b"gzip"), (TE, b"chunked")], Framing(BodyKind.CHUNKED)),
        (b"GET", 200, [(TE, b", chunked")], Framing(BodyKind.CHUNKED)),
        (b"GET", 200, [(TE, b"chunked, gzip")], Framing(BodyKind.UNTIL_CLOSE)),
        (b"GET", 200, [(TE, b"gzip")], Framing(BodyKind.UNTIL_CLOSE)),
        (b"GET", 200, [(TE, b"identity")], Framing(BodyKind.UNTIL_CLOSE)),
        (b"GET", 200, [(TE, b"chunked,")], Framing(BodyKind.UNTIL_CLOSE)),
        (b"GET", 200, [(TE, b"chunked;q=1")], Framing(BodyKind.UNTIL_CLOSE)),
        (b"GET", 200, [(TE, b"")], Framing(BodyKind.UNTIL_CLOSE)),
        # Transfer-Encoding overrides Content-Length, valid or not (RFC 9112 6.3 item 3)
        (b"GET", 200, [(TE, b"chunked"), (CL, b"5")], Framing(BodyKind.CHUNKED)),
        (b"GET", 200, [(CL, b"junk"), (TE, b"chunked")], Framing(BodyKind.CHUNKED)),
        (b"GET", 200, [(TE, b"gzip"), (CL, b"5")], Framing(BodyKind.UNTIL_CLOSE)),
        # Content-Length
        (b"GET", 200, [(CL, b"5")], Framing(BodyKind.LENGTH, 5)),
        (b"POST", 201, [(CL, b"0")], Framing(BodyKind.LENGTH, 0)),
        (b"GET", 200, [(CL, b"5, 5")], Framing(BodyKind.LENGTH, 5)),
        (b"GET", 200, [(CL, b"5"), (CL, b"5")], Framing(BodyKind.LENGTH, 5)),
        (b"GET", 404, [(CL, b"9")], Framing(BodyKind.LENGTH, 9)),
        # neither: read until the upstream closes
        (b"GET", 200, [], Framing(BodyKind.UNTIL_CLOSE)),
        (b"GET", 500, [(b"Content-Type", b"text/plain")], Framing(BodyKind.UNTIL_CLOSE)),
    ],
)
def test_response_framing(method: bytes, status: int, headers: Headers, expected: Framing) -> None:
    assert response_framing(method, status, headers) == expected


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ([(TE, b"chunked, chunked")], "more than once"),
        ([(TE, b"chunked"), (TE, b"chunked")], "more than once"),
        ([(TE, b"chunked, gzip, chunked")], "more than once"),
        ([(CL, b"+5")], "invalid Content-Length"),
        ([(CL, b"0x5")], "invalid Content-Length"),
        ([(CL, b"")], "invalid Content-Length"),
        ([(CL, b"1,2")], "conflicting"),
        ([(CL, b"5"), (CL, b"6")], "conflicting"),
        ([(CL, b"1" * 19)], "too large"),
    ],
)
def test_response_framing_refuses_untrustworthy_responses_with_502(headers: Headers, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        response_framing(b"GET", 200, headers)
    assert info.value.status == 502


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([(CL, b"5")], b"hello"),
        ([(TE, b"chunked")], b"5\r\nhello\r\n0\r\n\r\n"),
        ([(TE, b"gzip, chunked")], b"5\r\nhello\r\n0\r\n\r\n"),
    ],
)
def test_response_framing_agrees_with_llhttp(headers: Headers, body: bytes) -> None:
    framing = response_framing(b"GET", 200, headers)
    (message,) = parse(response_head(200, headers) + body, response=True)
    assert message.complete
    assert message.body == b"hello"
    assert framing.kind in (BodyKind.LENGTH, BodyKind.CHUNKED)


# --- RFC 9110 section 7.6.3, RFC 7239 and X-Forwarded-*: forwarding fields ----------------------


def fields(headers: Headers, name: bytes) -> list[bytes]:
    return [value for n, value in headers if n.lower() == name]


def test_forward_request_headers_adds_the_forwarding_fields() -> None:
    headers = [(b"Host", b"example.com"), (b"Accept", b"*/*"), (b"Connection", b"keep-alive")]
    out = forward_request_headers(headers, client_addr="192.0.2.7", scheme="https")
    assert out == [
        (b"Host", b"example.com"),
        (b"Accept", b"*/*"),
        (b"Via", b"1.1 distpat"),
        (b"X-Forwarded-For", b"192.0.2.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"example.com"),
    ]
    assert headers == [(b"Host", b"example.com"), (b"Accept", b"*/*"), (b"Connection", b"keep-alive")]


def test_x_forwarded_for_appends_to_every_received_line() -> None:
    headers = [
        (b"Host", b"h"),
        (b"X-Forwarded-For", b"203.0.113.1"),
        (b"x-forwarded-for", b" 203.0.113.2, 203.0.113.3 "),
        (b"X-Forwarded-For", b""),
    ]
    out = forward_request_headers(headers, client_addr="192.0.2.7", scheme="http")
    assert fields(out, b"x-forwarded-for") == [b"203.0.113.1, 203.0.113.2, 203.0.113.3, 192.0.2.7"]


def test_x_forwarded_proto_and_host_are_replaced() -> None:
    headers = [
        (b"X-Forwarded-Proto", b"https"),
        (b"host", b"real.example:8080"),
        (b"X-FORWARDED-HOST", b"spoofed.example"),
        (b"x-forwarded-proto", b"gopher"),
    ]
    out = forward_request_headers(headers, client_addr="192.0.2.7", scheme="http")
    assert fields(out, b"x-forwarded-proto") == [b"http"]
    assert fields(out, b"x-forwarded-host") == [b"real.example:8080"]
    assert fields(out, b"host") == [b"real.example:8080"]


@pytest.mark.parametrize("host", [None, b"", b"  "])
def test_x_forwarded_host_from_the_client_is_dropped_without_a_host(host: bytes | None) -> None:
    headers = [(b"X-Forwarded-Host", b"spoofed.example")]
    if host is not None:
        headers.append((b"Host", host))
    out = forward_request_headers(headers, client_addr="192.0.2.7", scheme="http")
    assert fields(out, b"x-forwarded-host") == []


def test_via_is_appended_to_requests_and_responses() -> None:
    received = [(b"Via", b"1.0 fred"), (b"VIA", b"1.1 p.example (Apache/1.1)"), (b"Host", b"h")]
    out = forward_request_headers(received, client_addr="192.0.2.7", scheme="http")
    assert fields(out, b"via") == [b"1.0 fred, 1.1 p.example (Apache/1.1), 1.1 distpat"]
    out = forward_request_headers(received, client_addr="192.0.2.7", scheme="http", via=b"1.0 edge")
    assert fields(out, b"via") == [b"1.0 fred, 1.1 p.example (Apache/1.1), 1.0 edge"]
    response = [(b"Content-Length", b"2"), (b"Via", b"1.1 origin-cache"), (b"Keep-Alive", b"timeout=5")]
    assert forward_response_headers(response) == [
        (b"Content-Length", b"2"),
        (b"Via", b"1.1 origin-cache, 1.1 distpat"),
    ]


def test_forward_response_headers_strips_hop_by_hop_and_keeps_order() -> None:
    response = [
        (b"Set-Cookie", b"a=1"),
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"secret"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"b=2"),
        (b"Proxy-Authenticate", b"Basic"),
    ]
    assert forward_response_headers(response, via=b"1.1 x") == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Via", b"1.1 x"),
    ]


@pytest.mark.parametrize(
    ("client_addr", "host", "element"),
    [
        ("192.0.2.7", b"example.com", b"for=192.0.2.7;proto=https;host=example.com"),
        ("2001:db8::1", b"example.com", b'for="[2001:db8::1]";proto=https;host=example.com'),
        ("::1", b"example.com", b'for="[::1]";proto=https;host=example.com'),
        ("[2001:db8::1]:4711", b"example.com", b'for="[2001:db8::1]:4711";proto=https;host=example.com'),
        ("192.0.2.7:4711", b"example.com", b'for="192.0.2.7:4711";proto=https;host=example.com'),
        ("192.0.2.7", b"example.com:8443", b'for=192.0.2.7;proto=https;host="example.com:8443"'),
        ("192.0.2.7", b"[2001:db8::2]:80", b'for=192.0.2.7;proto=https;host="[2001:db8::2]:80"'),
        ("192.0.2.7", b"x(y)", b'for=192.0.2.7;proto=https;host="x(y)"'),
        ("192.0.2.7", None, b"for=192.0.2.7;proto=https"),
        ("", b"example.com", b"for=unknown;proto=https;host=example.com"),
    ],
)
def test_forwarded_element_quoting(client_addr: str, host: bytes | None, element: bytes) -> None:
    headers = [] if host is None else [(b"Host", host)]
    out = forward_request_headers(headers, client_addr=client_addr, scheme="https", forwarded=True)
    assert fields(out, b"forwarded") == [element]


def test_forwarded_omits_a_parameter_it_cannot_quote() -> None:
    out = forward_request_headers([], client_addr="192.0.2.7", scheme="ht\x7ftp", forwarded=True)
    assert fields(out, b"forwarded") == [b"for=192.0.2.7"]


def test_forwarded_appends_to_the_received_list_only_when_asked() -> None:
    headers = [(b"Forwarded", b"for=198.51.100.17"), (b"Host", b"h"), (b"forwarded", b"for=unknown")]
    out = forward_request_headers(headers, client_addr="192.0.2.7", scheme="http", forwarded=True)
    assert fields(out, b"forwarded") == [b"for=198.51.100.17, for=unknown, for=192.0.2.7;proto=http;host=h"]
    out = forward_request_headers(headers, client_addr="192.0.2.7", scheme="http")
    assert [h for h in out if h[0].lower() == b"forwarded"] == [
        (b"Forwarded", b"for=198.51.100.17"),
        (b"forwarded", b"for=unknown"),
    ]
    assert out[:3] == [(b"Forwarded", b"for=198.51.100.17"), (b"Host", b"h"), (b"forwarded", b"for=unknown")]


def test_forward_request_headers_strips_hop_by_hop_first() -> None:
    headers = [
        (b"Host", b"h"),
        (b"Connection", b"keep-alive, X-Secret, X-Forwarded-For"),
        (b"X-Secret", b"s"),
        (b"X-Forwarded-For", b"6.6.6.6"),
        (b"TE", b"trailers"),
        (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
        (b"Upgrade", b"websocket"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Content-Length", b"3"),
    ]
    out = forward_request_headers(headers, client_addr="192.0.2.7", scheme="http")
    assert names(out) == [
        b"host",
        b"content-length",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ]
    assert fields(out, b"x-forwarded-for") == [b"192.0.2.7"]


def test_more_than_one_host_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="more than one Host") as info:
        forward_request_headers([(b"Host", b"a"), (b"host", b"b")], client_addr="1.2.3.4", scheme="http")
    assert info.value.status == 400


# --- RFC 9112 sections 3-5: writing heads -------------------------------------------------------


def test_request_head_bytes() -> None:
    head = request_head(b"GET", b"/a?b=c", [(b"Host", b"example.com"), (b"accept", b"*/*")])
    assert head == b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\naccept: */*\r\n\r\n"
    assert request_head(b"OPTIONS", b"*", []) == b"OPTIONS * HTTP/1.1\r\n\r\n"


def test_response_head_bytes_and_reasons() -> None:
    assert response_head(200, [(b"Content-Length", b"0")]) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert response_head(404, []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert response_head(413, []) == b"HTTP/1.1 413 Content Too Large\r\n\r\n"
    assert response_head(431, []).startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert response_head(504, []).startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert response_head(299, []) == b"HTTP/1.1 299 \r\n\r\n"
    assert response_head(200, [], reason=b"Fine") == b"HTTP/1.1 200 Fine\r\n\r\n"
    assert response_head(200, [], reason=b"") == b"HTTP/1.1 200 \r\n\r\n"
    assert response_head(200, [], version=b"1.0") == b"HTTP/1.0 200 OK\r\n\r\n"


@pytest.mark.parametrize(
    "status", [100, 200, 201, 204, 206, 301, 302, 304, 400, 404, 408, 413, 431, 500, 502, 503, 504]
)
def test_common_statuses_have_reasons(status: int) -> None:
    line = response_head(status, []).split(b"\r\n")[0]
    assert len(line) > len(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("status", [0, 99, 1000, -200])
def test_response_head_refuses_a_status_that_is_not_three_digits(status: int) -> None:
    with pytest.raises(LocalProtocolError, match="three digits"):
        response_head(status, [])


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/", [(b"X-A", b"1\r\nX-Injected: 1")]),
        (b"GET", b"/", [(b"X-A", b"1\nX-Injected: 1")]),
        (b"GET", b"/", [(b"X-A", b"bare\rcr")]),
        (b"GET", b"/", [(b"X-A\r\nX-B", b"1")]),
        (b"GET", b"/\r\nX: y", []),
        (b"GET", b"/a b", []),
        (b"G T", b"/", []),
        (b"", b"/", []),
        (b"GET", b"", []),
    ],
)
def test_request_head_refuses_to_split_lines(method: bytes, target: bytes, headers: Headers) -> None:
    with pytest.raises(LocalProtocolError):
        request_head(method, target, headers)


def test_response_head_refuses_to_split_lines() -> None:
    with pytest.raises(LocalProtocolError, match="CR or LF"):
        response_head(200, [(b"Set-Cookie", b"a=1\r\n\r\n<html>")])
    with pytest.raises(LocalProtocolError, match="CR or LF"):
        response_head(200, [], reason=b"OK\r\nX: y")


_METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]
_VCHAR = bytes(range(0x21, 0x7F))
tokens = st.text(alphabet=_TCHARS, min_size=1, max_size=12).map(str.encode)
field_values = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=20).map(
        lambda b: bytes(
            _VCHAR[c % len(_VCHAR)] if i in (0, len(b) - 1) or c % 5 else 0x20 for i, c in enumerate(b)
        )
    ),
)
targets = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%", max_size=30).map(
    lambda t: b"/" + t.encode()
)


@given(
    st.sampled_from(_METHODS), targets, st.lists(st.tuples(tokens, field_values), max_size=8), st.booleans()
)
def test_request_head_round_trips_through_httptools(
    method: bytes, target: bytes, headers: Headers, bytewise: bool
) -> None:
    (message,) = parse(request_head(method, target, headers), bytewise=bytewise)
    assert message.method == method
    assert message.url == target
    assert message.headers == headers


@given(
    st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304)),
    st.lists(st.tuples(tokens, field_values), max_size=8).map(
        lambda hs: [h for h in hs if h[0].lower() not in (b"content-length", b"transfer-encoding")]
    ),
    st.binary(max_size=40),
)
def test_response_head_round_trips_through_httptools(status: int, headers: Headers, body: bytes) -> None:
    data = response_head(status, [*headers, (b"Content-Length", b"%d" % len(body))]) + body
    for bytewise in (False, True):
        (message,) = parse(data, response=True, bytewise=bytewise)
        assert message.status == status
        assert message.headers == [*headers, (b"Content-Length", b"%d" % len(body))]
        assert message.body == body
        assert message.complete


# --- error responses ----------------------------------------------------------------------------


def test_error_response_is_a_complete_response() -> None:
    data = error_response(502, "upstream 'a' refused the connection")
    body = b"502 Bad Gateway: upstream 'a' refused the connection\n"
    assert (
        data
        == (
            b"HTTP/1.1 502 Bad Gateway\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Cache-Control: no-store\r\n"
            b"X-Content-Type-Options: nosniff\r\n"
            b"Connection: close\r\n"
            b"\r\n" % len(body)
        )
        + body
    )
    (message,) = parse(data, response=True, bytewise=True)
    assert message.status == 502
    assert message.body == body
    assert message.complete


def test_error_response_options() -> None:
    data = error_response(
        431, "too many header bytes", close=False, extra=[(b"Retry-After", b"1"), (b"X-Req", b"7")]
    )
    (message,) = parse(data, response=True)
    assert (b"Connection", b"close") not in message.headers
    assert message.headers[-2:] == [(b"Retry-After", b"1"), (b"X-Req", b"7")]
    assert message.body == b"431 Request Header Fields Too Large: too many header bytes\n"
    assert parse(error_response(599, "odd"), response=True)[0].body == b"599: odd\n"


def test_error_response_body_is_utf8_and_survives_odd_text() -> None:
    (message,) = parse(error_response(400, "bad header name b'\\xff' \u2013 r\u00e9jected"), response=True)
    assert message.body.decode("utf-8") == "400 Bad Request: bad header name b'\\xff' \u2013 r\u00e9jected\n"
    (message,) = parse(error_response(400, "lone \ud800 surrogate"), response=True)
    assert message.body == b"400 Bad Request: lone \\ud800 surrogate\n"
    (message,) = parse(error_response(400, "two\r\nlines"), response=True)
    assert message.body == b"400 Bad Request: two\r\nlines\n"
    assert message.complete


@pytest.mark.parametrize("status", [200, 204, 304, 399, 600, 101])
def test_error_response_needs_an_error_status(status: int) -> None:
    with pytest.raises(LocalProtocolError, match="4xx or 5xx"):
        error_response(status, "x")


# --- RFC 9112 section 7.1: chunked coding -------------------------------------------------------


def test_chunk_bytes() -> None:
    assert chunk(b"") == b""
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 16) == b"10\r\n" + b"x" * 16 + b"\r\n"
    assert chunk(b"\r\n0\r\n\r\n") == b"7\r\n\r\n0\r\n\r\n\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


@given(st.lists(st.binary(max_size=300), max_size=6), st.booleans())
def test_chunks_decode_through_httptools(pieces: list[bytes], bytewise: bool) -> None:
    head = request_head(b"POST", b"/up", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")])
    data = head + b"".join(chunk(p) for p in pieces) + LAST_CHUNK
    assert request_framing(parse(data)[0].headers) == Framing(BodyKind.CHUNKED)
    (message,) = parse(data, bytewise=bytewise)
    assert message.body == b"".join(pieces)
    assert message.complete
