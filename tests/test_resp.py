"""The RESP codec (core/resp.py), the command table and the merge of split commands, property-tested."""

from __future__ import annotations

import contextlib
import itertools
import re
from unittest import mock

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpat.core import resp_fast
from distpat.core.redis_commands import COMMANDS, Kind, command_keys, lookup, split_keys
from distpat.core.redis_merge import merge_replies
from distpat.core.resp import (
    Command,
    ReplyScanner,
    RequestParser,
    command_bytes,
    encode_command,
)
from distpat.core.resp_decode import ErrorReply, ReplyDecoder
from distpat.core.resp_fast import FastRequestParser
from distpat.errors import RespProtocolError

args_st = st.lists(st.binary(max_size=40), min_size=1, max_size=6)
commands_st = st.lists(args_st, min_size=1, max_size=12)
inline_word = st.binary(min_size=1, max_size=10).filter(
    lambda b: not any(c in b" \t\r\n\x0b\x0c" for c in b) and b[0] != 42  # no whitespace, not '*'
)


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(parser: RequestParser | FastRequestParser, pieces: list[bytes]) -> list[list[bytes]]:
    out = []
    for piece in pieces:
        out.extend(parser.feed(piece))
    assert parser.buffered == 0 or isinstance(parser, FastRequestParser)
    return [args for args, _ in out]


@given(commands=commands_st, points=st.lists(st.integers(0, 10_000), max_size=8))
def test_any_split_of_a_valid_stream_decodes_to_the_same_commands(
    commands: list[list[bytes]], points: list[int]
) -> None:
    data = b"".join(encode_command(c) for c in commands)
    for parser in (RequestParser(), FastRequestParser()):
        assert feed_all(parser, cuts(data, points)) == commands
    # the bytes kept (or packed again) are the command's own multibulk form
    decoded = RequestParser().feed(data) + FastRequestParser().feed(data)
    assert [command_bytes(c) for c in decoded] == [encode_command(c) for c in commands] * 2


@given(words=st.lists(st.lists(inline_word, min_size=1, max_size=4), min_size=1, max_size=5))
def test_inline_commands(words: list[list[bytes]]) -> None:
    data = b"".join(b" ".join(w) + b"\r\n" for w in words)
    parser = RequestParser()
    decoded = parser.feed(data)
    assert [a for a, _ in decoded] == words
    assert [command_bytes(c) for c in decoded] == [encode_command(w) for w in words]


@settings(max_examples=300)
@given(data=st.binary(max_size=200), points=st.lists(st.integers(0, 1000), max_size=4))
def test_arbitrary_bytes_raise_only_the_protocol_error(data: bytes, points: list[int]) -> None:
    for parser in (RequestParser(max_request_bytes=4096), FastRequestParser(max_request_bytes=4096)):
        try:
            for piece in cuts(data, points):
                parser.feed(piece)
        except RespProtocolError:
            pass


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\r\n$abc\r\n", "invalid bulk length"),
        (b"*1\r\n+x\r\n", "expected '$'"),
        (b"*2\r\n$1\r\na\r\n:5\r\n", "expected '$'"),
        (b"*1\r\n$3\r\nabcXY", "CRLF"),
    ],
)
def test_malformed_requests(data: bytes, message: str) -> None:
    with pytest.raises(RespProtocolError, match=re.escape(message)):
        RequestParser().feed(data)
    with pytest.raises(RespProtocolError):
        FastRequestParser().feed(data)


def test_fast_parser_refuses_what_redis_refuses() -> None:
    for data in (b"*1\r\n+x\r\n", b"*2\r\n$1\r\na\r\n:5\r\n", b"+OK\r\n", b"*1\r\n*1\r\n$1\r\na\r\n"):
        with pytest.raises(RespProtocolError):
            FastRequestParser().feed(data)


bulk_value = st.one_of(st.binary(max_size=8), st.integers(1020, 1030).map(lambda n: b"v" * n))
request_element = st.one_of(
    st.builds(lambda b: b"$%d\r\n%b\r\n" % (len(b), b), bulk_value),
    st.builds(lambda b: b"$%d\r\n%bXY" % (len(b), b), bulk_value),  # no CRLF after the value
    st.builds(lambda b: b"+%b\r\n" % b, st.sampled_from([b"", b"x", b"GET"])),
    st.builds(lambda i: b":%d\r\n" % i, st.integers(-5, 5)),
    st.builds(lambda b: b"=%d\r\ntxt:%b\r\n" % (len(b) + 4, b), st.binary(max_size=4)),
    st.sampled_from([b"$-1\r\n", b"_\r\n", b",1.5\r\n", b"#t\r\n", b"(123\r\n", b"*1\r\n$1\r\na\r\n"]),
)
request_st = st.builds(lambda xs: b"*%d\r\n" % len(xs) + b"".join(xs), st.lists(request_element, max_size=4))


def fast_outcome(data: bytes) -> tuple[list[Command], str | None]:
    try:
        return FastRequestParser().feed(data), None
    except RespProtocolError as exc:
        return exc.commands, str(exc)  # type: ignore[attr-defined]


@settings(max_examples=300)
@given(requests=st.lists(request_st, min_size=1, max_size=4))
def test_the_fast_parser_packs_and_refuses_as_hiredis_pack_command_does(requests: list[bytes]) -> None:
    """Short commands are packed again in Python (resp_fast._BULK_HEADS); without the table every
    command is packed by hiredis.pack_command: the commands, their bytes and the faults are the same."""
    data = b"".join(requests)
    with mock.patch.object(resp_fast, "_BULK_HEADS", []):
        expected = fast_outcome(data)
    assert fast_outcome(data) == expected


@pytest.mark.parametrize("pieces", [[b"*2147483647\r\n"], [b"*21474", b"83647\r\n"], [b"*4294967295\r\n"]])
def test_a_huge_array_count_is_refused_before_anything_is_allocated(pieces: list[bytes]) -> None:
    # hiredis would allocate the whole list when it reads the count: the fast parser hands such
    # input to the Python one, which checks the count against MAX_ARGS
    with pytest.raises(RespProtocolError, match="invalid multibulk length"):
        feed_all(FastRequestParser(), pieces)
    value = encode_command([b"SET", b"k", b"*12345678 inside a value"])
    assert feed_all(FastRequestParser(), [value]) == [[b"SET", b"k", b"*12345678 inside a value"]]


def test_the_commands_before_a_fault_are_kept() -> None:
    good = encode_command([b"SET", b"a", b"1"])
    for parser in (RequestParser(), FastRequestParser()):
        with pytest.raises(RespProtocolError) as info:
            parser.feed(good + b"*1\r\n+x\r\n")
        assert [a for a, _ in info.value.commands] == [[b"SET", b"a", b"1"]]  # type: ignore[attr-defined]


def test_request_size_is_bounded() -> None:
    big = encode_command([b"SET", b"k", b"x" * 10_000])
    for parser in (RequestParser(max_request_bytes=4096), FastRequestParser(max_request_bytes=4096)):
        with pytest.raises(RespProtocolError, match=r"larger than|invalid bulk length"):
            feed_all(parser, [big[i : i + 1000] for i in range(0, len(big), 1000)])


# -- replies --------------------------------------------------------------------------------------

simple_reply = st.one_of(
    st.builds(
        lambda b: b"+" + b + b"\r\n",
        st.binary(max_size=10).filter(lambda b: b"\r" not in b and b"\n" not in b),
    ),
    st.builds(lambda i: b":%d\r\n" % i, st.integers(-(10**12), 10**12)),
    st.builds(lambda b: b"$%d\r\n%b\r\n" % (len(b), b), st.binary(max_size=30)),
    st.just(b"$-1\r\n"),
    st.just(b"*-1\r\n"),
    st.just(b"_\r\n"),
    st.just(b",1.5\r\n"),
    st.just(b"#t\r\n"),
    st.just(b"(12345678901234567890\r\n"),
    st.just(b"-ERR nope\r\n"),
    st.builds(lambda b: b"=%d\r\ntxt:%b\r\n" % (len(b) + 4, b), st.binary(max_size=10)),
)
reply_st = st.recursive(
    simple_reply,
    lambda inner: st.one_of(
        st.builds(lambda xs: b"*%d\r\n" % len(xs) + b"".join(xs), st.lists(inner, max_size=4)),
        st.builds(lambda xs: b"~%d\r\n" % len(xs) + b"".join(xs), st.lists(inner, max_size=4)),
        st.builds(
            lambda kv: b"%%%d\r\n" % len(kv) + b"".join(k + v for k, v in kv),
            st.lists(st.tuples(inner, inner), max_size=3),
        ),
        st.builds(lambda kv, r: b"|1\r\n" + kv[0] + kv[1] + r, st.tuples(inner, inner), inner),
    ),
    max_leaves=12,
)


@given(
    replies=st.lists(reply_st, min_size=1, max_size=8), points=st.lists(st.integers(0, 10_000), max_size=6)
)
def test_replies_are_framed_whole_at_any_split(replies: list[bytes], points: list[int]) -> None:
    data = b"".join(replies)
    scanner = ReplyScanner()
    out = []
    for piece in cuts(data, points):
        out.extend(scanner.feed(piece))
    assert out == replies
    assert scanner.buffered == 0


@given(
    replies=st.lists(reply_st, min_size=1, max_size=8), points=st.lists(st.integers(0, 10_000), max_size=6)
)
def test_replies_decode_at_any_split_as_hiredis_decodes_them_whole(
    replies: list[bytes], points: list[int]
) -> None:
    whole = hiredis.Reader(replyError=ErrorReply)  # type: ignore[arg-type]
    whole.feed(b"".join(replies))
    decoder = ReplyDecoder()
    try:
        expected = [whole.gets() for _ in replies]
    except TypeError:  # a map keyed by an array: refused, as a protocol error
        with pytest.raises(RespProtocolError):
            decoder.feed(b"".join(replies))
        return
    out: list[object] = []
    for piece in cuts(b"".join(replies), points):
        out.extend(decoder.feed(piece))
    assert out == expected
    assert decoder.buffered == 0


def test_decoded_errors_and_limits() -> None:
    decoder = ReplyDecoder(max_reply_bytes=64)
    assert decoder.feed(b"-ERR no\r\n*2\r\n:1\r\n-WRONGTYPE x\r\n$-1\r\n") == [
        ErrorReply("ERR no"),
        [1, ErrorReply("WRONGTYPE x")],
        None,
    ]
    with pytest.raises(RespProtocolError, match="larger than 64 bytes"):
        decoder.feed(b"$100\r\n" + b"x" * 90)
    with pytest.raises(RespProtocolError):
        ReplyDecoder().feed(b"?\r\n")


@settings(max_examples=300)
@given(data=st.binary(max_size=200))
def test_arbitrary_reply_bytes_raise_only_the_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RespProtocolError):
        ReplyScanner(max_reply_bytes=4096).feed(data)


# -- the command table and merging --------------------------------------------------------------


def test_keys_of_commands() -> None:
    assert command_keys([b"GET", b"k"], COMMANDS[b"get"]) == [b"k"]
    assert command_keys([b"MSET", b"a", b"1", b"b", b"2"], COMMANDS[b"mset"]) == [b"a", b"b"]
    assert command_keys([b"EVAL", b"s", b"2", b"x", b"y", b"arg"], COMMANDS[b"eval"]) == [b"x", b"y"]
    assert command_keys([b"RENAME", b"a", b"b"], COMMANDS[b"rename"]) == [b"a", b"b"]
    assert isinstance(command_keys([b"MSET", b"a", b"1", b"b"], COMMANDS[b"mset"]), bytes)  # odd pairs
    assert isinstance(command_keys([b"EVAL", b"s", b"0"], COMMANDS[b"eval"]), bytes)  # no key to route by
    assert isinstance(command_keys([b"EVAL", b"s", b"5", b"x"], COMMANDS[b"eval"]), bytes)
    assert isinstance(command_keys([b"RENAME", b"a"], COMMANDS[b"rename"]), bytes)
    assert lookup(b"GeT") is COMMANDS[b"get"]
    assert lookup(b"KEYS") is not None
    assert lookup(b"KEYS").kind is Kind.REFUSED  # type: ignore[union-attr]
    assert lookup(b"nosuch") is None


def test_split_keeps_the_clients_order_per_server() -> None:
    args = [b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"]
    frags = split_keys(args, COMMANDS[b"mset"], ["s1", "s2", "s1"])
    assert frags == {"s1": ([0, 2], [b"MSET", b"a", b"1", b"c", b"3"]), "s2": ([1], [b"MSET", b"b", b"2"])}


def test_merges() -> None:
    assert merge_replies(
        b"mget", 3, [([0, 2], b"*2\r\n$1\r\na\r\n$-1\r\n"), ([1], b"*1\r\n$1\r\nb\r\n")]
    ) == (b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n")
    # a failed fragment: its keys get its error, the others their values
    assert merge_replies(b"mget", 2, [([0], b"-ERR down\r\n"), ([1], b"*1\r\n_\r\n")]) == (
        b"*2\r\n-ERR down\r\n_\r\n"
    )
    assert merge_replies(b"del", 3, [([0, 1], b":2\r\n"), ([2], b":0\r\n")]) == b":2\r\n"
    assert merge_replies(b"exists", 3, [([0, 1], b":1\r\n"), ([2], b"-ERR x\r\n")]) == b"-ERR x\r\n"
    assert merge_replies(b"mset", 2, [([0], b"+OK\r\n"), ([1], b"+OK\r\n")]) == b"+OK\r\n"
    assert merge_replies(b"mset", 2, [([0], b"+OK\r\n"), ([1], b"-ERR oom\r\n")]) == b"-ERR oom\r\n"


# -- hostile lengths: refused when the length is read, as redis-server does ----------------------

LIMIT = 1 << 16

#: A length line over LIMIT: just over, far over, past 2^63, with more digits than any count has.
huge_length = st.one_of(
    st.integers(LIMIT + 1, LIMIT * 4),
    st.integers(10**9, 10**12),
    st.integers(2**63 - 1, 2**64 + 5),
    st.integers(10**18, 10**30),
)


def parsers() -> list[RequestParser | FastRequestParser]:
    return [RequestParser(LIMIT), FastRequestParser(LIMIT)]


def feed_until_refused(
    parser: RequestParser | FastRequestParser, pieces: list[bytes]
) -> tuple[str, int, list[Command]]:
    """Feed ``pieces`` until the parser refuses; the message, how many bytes it had been given, and the
    commands it returned (before the fault, with the fault's own)."""
    given_bytes = 0
    out: list[Command] = []
    for piece in pieces:
        given_bytes += len(piece)
        try:
            out.extend(parser.feed(piece))
        except RespProtocolError as exc:
            out.extend(getattr(exc, "commands", []))
            return str(exc), given_bytes, out
    raise AssertionError("the parser never refused")


@given(
    before=st.lists(args_st, max_size=3),
    position=st.integers(0, 3),
    length=huge_length,
    body=st.integers(0, 64),
    points=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_a_bulk_length_over_the_limit_is_refused_when_read(
    before: list[list[bytes]], position: int, length: int, body: int, points: list[int]
) -> None:
    """Any argument of the command may carry it, after any complete commands, the stream cut anywhere."""
    prefix = b"".join(encode_command(c) for c in before)
    args = [b"SET", b"key", b"value", b"more"]
    head = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args[:position])
    length_read = len(prefix + head + b"$%d\r\n" % length)
    data = prefix + head + b"$%d\r\n" % length + b"x" * body
    pieces = cuts(data, points)
    ends = list(itertools.accumulate(len(p) for p in pieces))
    completing = next(end for end in ends if end >= length_read)  # the read that completes the length
    for parser in parsers():
        message, fed, commands = feed_until_refused(parser, pieces)
        assert message == "invalid bulk length", (type(parser), message)
        assert fed == completing, type(parser)  # refused by that very read, not later
        assert [c[0] for c in commands] == before


@given(
    count=st.one_of(st.integers(LIMIT // 6 + 1, 10**6), st.integers(10**6 + 1, 10**12)),
    points=st.lists(st.integers(0, 100), max_size=3),
)
def test_a_multibulk_count_beyond_the_limit_is_refused_when_read(count: int, points: list[int]) -> None:
    """Counts whose smallest arguments ("$0\\r\\n\\r\\n" each) cannot fit the limit, and past a million."""
    data = b"*%d\r\n$3\r\nGET\r\n" % count
    for parser in parsers():
        message, _, commands = feed_until_refused(parser, cuts(data, points))
        assert message == "invalid multibulk length", (type(parser), message)
        assert commands == []


@given(
    sizes=st.lists(st.integers(LIMIT // 4, LIMIT - 100), min_size=2, max_size=6),
    points=st.lists(st.integers(0, 10_000), max_size=4),
)
def test_lengths_each_within_the_limit_adding_up_past_it_are_refused_once_they_do(
    sizes: list[int], points: list[int]
) -> None:
    """A command that never ends (one more argument is announced than sent), growing past the limit."""
    if sum(sizes) <= LIMIT:
        return  # the command fits: nothing hostile here
    sent = b"*%d\r\n$4\r\nMSET\r\n" % (len(sizes) + 2)
    for size in sizes:
        sent += b"$%d\r\n" % size
        if len(sent) > LIMIT:
            break
        sent += b"v" * size + b"\r\n"
    for parser in parsers():
        message, fed, commands = feed_until_refused(parser, cuts(sent, points))
        assert message == f"request larger than {LIMIT} bytes", message
        assert commands == []
        assert fed <= LIMIT + LIMIT  # refused by the read that went past it, not later
