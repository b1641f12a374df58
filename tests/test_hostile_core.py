"""The pure rules behind the hostile-input fixes: Host values, absolute-form targets, canonical
Content-Length, and the chunk-size lines found in a chunked body read by read (core/chunked.py)."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.chunked import MAX_CHUNK_LINE, ChunkLines, check_chunk_line
from distpat.core.http import forward_request_headers, origin_form, replace_host, valid_host
from distpat.errors import RemoteProtocolError

# -- Host and targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [b"", b"h", b"example.com", b"example.com:8080", b"127.0.0.1:1", b"[::1]", b"[2001:db8::1]:443",
     b"xn--bcher-kva.example", b"a-b.c_d", b"%41b", b"[v1.fe]", b"x(y)"],
)  # fmt: skip
def test_valid_hosts(host: bytes) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host",
    [b"u@h", b"u:p@h", b"a,b", b"a b", b"a/b", b"a\\b", b"a:b:c", b"::1", b"[::1", b"::1]", b"h:",
     b"h:123456", b"h:8o", b"[::1]x", b"%4", b"%zz", b"h\"", b"h?q", b"h#f", b"[]", b"<h>", b"h\x00"],
)  # fmt: skip
def test_invalid_hosts(host: bytes) -> None:
    assert not valid_host(host)
    with pytest.raises(RemoteProtocolError) as caught:
        forward_request_headers([(b"Host", host)], client_addr="10.0.0.1", scheme="http")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("target", "origin", "authority"),
    [
        (b"/p?q", b"/p?q", None),
        (b"*", b"*", None),
        (b"http://h/p?q", b"/p?q", b"h"),
        (b"HTTP://h:81", b"/", b"h:81"),
        (b"https://[::1]:8443?x=1", b"/?x=1", b"[::1]:8443"),
        (b"http://h#frag", b"/#frag", b"h"),
    ],
)
def test_origin_form(target: bytes, origin: bytes, authority: bytes | None) -> None:
    assert origin_form(target) == (origin, authority)


@pytest.mark.parametrize(
    "target", [b"ftp://h/", b"http://", b"http:///p", b"http://u@h/", b"h/p", b"http://a,b/"]
)
def test_origin_form_refuses(target: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        origin_form(target)
    assert caught.value.status == 400


def test_replace_host_refuses_an_invalid_host_even_when_the_target_names_another() -> None:
    assert replace_host([(b"host", b"a"), (b"X", b"1")], b"b:1") == [(b"host", b"b:1"), (b"X", b"1")]
    with pytest.raises(RemoteProtocolError):
        replace_host([(b"Host", b"a@b")], b"b")


@given(st.integers(0, 10**17), st.integers(0, 5), st.integers(1, 3), st.booleans())
def test_content_length_is_written_canonical(length: int, zeros: int, repeats: int, as_list: bool) -> None:
    value = b"0" * zeros + b"%d" % length
    if as_list:
        fields = [(b"Content-Length", b", ".join([value] * repeats))]
    else:
        fields = [(b"content-length", value)] * repeats
    out = forward_request_headers([(b"Host", b"h"), *fields], client_addr="a", scheme="http")
    assert [v for n, v in out if n.lower() == b"content-length"] == [b"%d" % length]
    assert out[1][0] == fields[0][0]  # where the first one was, with its name


# -- chunk-size lines ---------------------------------------------------------------------------------------


class Engine:
    """What the proxy engine does with llhttp's chunk callbacks (net/server.py), without sockets;
    the size lines found are collected instead of checked."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.received = 0
        self.chunks: ChunkLines | None = None
        self.true_lines: list[int] = []  # the read each size line ended in, in order
        self.found: list[bytes] = []
        self.partials: list[bytes] = []
        self.read = 0
        self.completed_in: int | None = None
        self.heads = 0

    def on_headers_complete(self) -> None:
        self.heads += 1
        if self.heads == 2:  # the chunked request follows a bodiless one
            self.chunks = ChunkLines()

    def on_chunk_header(self) -> None:
        assert self.chunks is not None
        self.chunks.header(self.received)
        self.true_lines.append(self.read)

    def on_chunk_complete(self) -> None:
        assert self.chunks is not None
        self.chunks.complete(self.received)

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        if self.heads == 2:
            self.chunks = None
            self.completed_in = self.read

    def feed(self, data: bytes) -> None:
        self.read += 1
        self.parser.feed_data(memoryview(data))
        chunks = self.chunks
        if chunks is None:
            return
        lines, partial, _ = chunks.read(data, self.received)
        self.found += reversed(lines)
        if partial is not None:
            self.partials.append(partial)


extensions = st.lists(
    st.tuples(
        st.from_regex(rb"[a-z]{1,5}", fullmatch=True), st.from_regex(rb"[a-z0-9]{0,5}", fullmatch=True)
    ),
    max_size=2,
).map(lambda pairs: b"".join(b";" + k + (b"=" + v if v else b"") for k, v in pairs))


@given(
    chunks=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 2), st.booleans(), extensions), max_size=8),
    last_ext=extensions,
    trailer=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    body_bytes=st.sampled_from([b"x", b"\r\n", b"\n", b"0\r\n"]),
)
def test_chunk_lines_are_found_whatever_the_reads(
    chunks: list[tuple[int, int, bool, bytes]],
    last_ext: bytes,
    trailer: bool,
    cuts: list[int],
    body_bytes: bytes,
) -> None:
    lines: list[bytes] = []
    body = b""
    for size, zeros, upper, ext in chunks:
        digits = b"%X" % size if upper else b"%x" % size
        line = b"0" * zeros + digits + ext
        lines.append(line)
        body += line + b"\r\n" + (body_bytes * size)[:size] + b"\r\n"
    lines.append(b"0" + last_ext)
    body += b"0" + last_ext + b"\r\n" + (b"T: 1\r\n" if trailer else b"") + b"\r\n"
    stream = (
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    )
    engine = Engine()
    points = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    start = 0
    for point in points:
        if point > start:
            engine.feed(stream[start:point])
            start = point
    assert engine.completed_in is not None
    assert len(engine.true_lines) == len(lines)
    # Every line is found, except those in the read that ends the body (nothing is left to wait
    # for) and the last chunk's, found only when a read ends right after it.
    reads = engine.true_lines
    expected = [line for read, line in zip(reads, lines, strict=True) if read != engine.completed_in]
    found = engine.found
    if expected and expected[-1] == lines[-1] and found[-1:] != [lines[-1]]:
        expected.pop()
    assert found == expected
    for partial in engine.partials:  # each read that ends in a size line ends in the start of a real one
        assert any((line + b"\r").startswith(partial) for line in lines) or partial == b""


def test_check_chunk_line_limits() -> None:
    check_chunk_line(b"a" * 16, 1 << 70, ended=True)
    check_chunk_line(b"ff;x=1", 255, ended=True)
    check_chunk_line(b"T: 1", 0, ended=True)  # not a size line: a trailer field
    for line, status in [
        (b"100", 413),
        (b"0000100;x", 413),
        (b"1" * 17, 413),
        (b"1;" + b"e" * MAX_CHUNK_LINE, 400),
    ]:
        with pytest.raises(RemoteProtocolError) as caught:
            check_chunk_line(line, 255, ended=True)
        assert caught.value.status == status
    with pytest.raises(RemoteProtocolError) as caught:
        check_chunk_line(b"1000", 255, ended=False)  # its CRLF has not come: already too large
    assert caught.value.status == 413
    check_chunk_line(b"ff", 255, ended=False)
