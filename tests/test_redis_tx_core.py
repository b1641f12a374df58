"""The transaction state machine (core/redis_tx.py): Redis's answers, with no server and no loop."""

from __future__ import annotations

import gc
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from distpat.core.redis_tx import EXECABORT, Block, Transaction, queue_keys, queued_cost
from distpat.core.resp import OK, encode_command, error

QUEUED = b"+QUEUED\r\n"


def test_misuse_is_answered_as_redis_does() -> None:
    tx = Transaction()
    assert tx.exec() == error("ERR EXEC without MULTI")
    assert tx.discard() == error("ERR DISCARD without MULTI")
    assert tx.multi() == OK
    assert tx.multi() == error("ERR MULTI calls can not be nested")
    assert tx.watch([b"k"]) == error("ERR WATCH inside MULTI is not allowed")
    assert not tx.flagged  # none of these flag the block, as in Redis
    assert tx.exec() == b"*0\r\n"
    assert tx.idle


def test_discard_forgets_the_queue_and_the_watch() -> None:
    tx = Transaction()
    assert tx.watch([b"w"]) is None
    tx.multi()
    assert tx.queue(encode_command([b"SET", b"a", b"1"]), [b"a"]) == QUEUED
    assert tx.discard() == OK
    assert tx.idle
    assert tx.commands == []


def test_queue_keys_checks_what_redis_would_and_what_a_proxy_cannot_route() -> None:
    assert queue_keys([b"SET", b"a", b"1"]) == [b"a"]
    assert queue_keys([b"SORT", b"s", b"STORE", b"d"]) == [b"s", b"d"]
    assert queue_keys([b"ZUNIONSTORE", b"d", b"2", b"a", b"b"]) == [b"d", b"a", b"b"]
    assert queue_keys([b"MSET", b"a", b"1", b"b", b"2"]) == [b"a", b"b"]  # whole, not split
    for refused, words in [
        ([b"NOSUCH"], b"unknown"),
        ([b"GET"], b"wrong number of arguments"),
        ([b"FLUSHALL"], b"every key of a server"),
        ([b"PING"], b"without a key"),
        ([b"EVAL", b"return 1", b"1", b"k"], b"--allow-scripts"),
    ]:
        reply = queue_keys(refused)
        assert isinstance(reply, bytes)
        assert reply.startswith(b"-ERR ")
        assert words in reply, reply
    assert queue_keys([b"EVAL", b"return 1", b"1", b"k"], allow_scripts=True) == [b"k"]


def test_a_block_over_max_bytes_is_flagged() -> None:
    raw = encode_command([b"SET", b"k", b"v" * 40])
    tx = Transaction(max_bytes=queued_cost(raw, [b"k"]) + 1)
    tx.multi()
    assert tx.queue(raw, [b"k"]) == QUEUED
    assert tx.queue(raw, [b"k"]).startswith(b"-ERR transaction larger than")
    assert tx.commands == []
    assert tx.keys == []
    assert tx.queue(raw, [b"k"]) == QUEUED  # Redis goes on queueing a flagged block
    assert tx.exec() == EXECABORT


def test_a_flood_of_tiny_queued_commands_keeps_memory_near_the_limit() -> None:
    """200k ``GET k`` cost 4 MB on the wire but ~4x that in objects: the limit counts the objects."""
    limit = 1 << 20
    tx = Transaction(max_bytes=limit)
    tx.multi()
    gc.collect()
    tracemalloc.start()
    try:
        refused = 0
        for i in range(limit // 8):  # bounded: far more commands than can fit
            key = b"k%d" % i
            args = [b"GET", key]
            reply = tx.queue(encode_command(args), queue_keys(args))
            if reply != QUEUED:
                refused += 1
                assert reply.startswith(b"-ERR transaction larger than")
            peak = tracemalloc.get_traced_memory()[0]
            if i % 1024 == 0:
                assert peak <= 1.5 * limit, f"{peak} bytes held for a {limit}-byte limit after {i} commands"
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert refused == 1  # the one that crossed it; the rest are +QUEUED into an aborted block
    assert held <= 1.5 * limit
    assert tx.exec() == EXECABORT


command = st.tuples(st.sampled_from([b"SET", b"INCR", b"NOSUCH", b"GET", b"PING"]), st.binary(max_size=8))


@given(commands=st.lists(command, max_size=12), watched=st.lists(st.binary(max_size=4), max_size=3))
def test_exec_runs_all_of_a_clean_block_or_none_of_a_flagged_one(
    commands: list[tuple[bytes, bytes]], watched: list[bytes]
) -> None:
    tx = Transaction()
    for key in watched:
        tx.watch([key])
    assert tx.multi() == OK
    accepted: list[bytes] = []
    keys: list[bytes] = []
    failed = False
    for name, key in commands:
        args = [name, key, b"1"] if name == b"SET" else [name, key]
        raw = encode_command(args)
        reply = tx.queue(raw, queue_keys(args))
        if name in (b"SET", b"INCR", b"GET"):
            assert reply == QUEUED
            accepted.append(raw)
            keys.append(key)
        else:
            assert reply.startswith(b"-ERR ")
            failed = True
    result = tx.exec()
    if failed:
        assert result == EXECABORT
    elif not accepted and not watched:
        assert result == b"*0\r\n"
    else:
        assert result == Block(tuple(accepted), (*keys, *watched))
        assert isinstance(result, Block)
        assert result.wire() == b"".join([encode_command([b"MULTI"]), *accepted, encode_command([b"EXEC"])])
        assert result.replies == len(accepted) + 2
    assert tx.idle  # EXEC ends the transaction and the WATCH, whatever it answers
