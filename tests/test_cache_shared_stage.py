"""The cache stage's shared store with no sockets: the stage's Calls to Redis, made-up replies.

With ``redis_url`` set, :class:`~distpat.core.cache_stage.CacheStage` reads a URL's variants
from Redis (``HGETALL``) before each GET or HEAD decision, makes its own store what Redis answered
(src/distpat/core/cache_shared.py), writes what it stores through as fire-and-forget ``EVAL``
Calls, deletes on invalidation and answers a PURGE with the count Redis gives. Every reply here
is the RESP2 value the engine hands the Call's continuation; a failing Redis (an error reply,
``"unavailable: ..."``, a reply of the wrong shape) leaves the decision to the local copy.
"""

from __future__ import annotations

import pytest

from distpat.core.cache_codec import decode_entry, encode_entry
from distpat.core.cache_policy import CachePolicy, Stored, make_stored, response_directives
from distpat.core.cache_redis import (
    BAN_PREFIX_SCRIPT,
    BAN_TAG_SCRIPT,
    PURGE_SCRIPT,
    STORE_SCRIPT,
    hash_key,
    tag_key,
    variant_field,
)
from distpat.core.cache_shared import REDIS_TIMEOUT
from distpat.core.cache_stage import CacheStage
from distpat.core.cache_store import MemoryStore
from distpat.core.real_ip import TrustedProxies
from distpat.core.stage import (
    Amend,
    Answer,
    Call,
    CallResult,
    Effect,
    Flight,
    FlightRole,
    Forward,
    Join,
    Outcome,
    OutcomeKind,
    Request,
    Response,
    Tick,
)

HOST = b"example.test"
CLIENT = "192.0.2.1"
URL = "redis://x"
NOW = 1_800_000_000.0
SIXTY = ((b"Cache-Control", b"max-age=60"),)
UNAVAILABLE = "unavailable: connect to 127.0.0.1:6390 failed: [Errno 111] Connection refused"
POLICY = CachePolicy()


def tick(t: float = 0.0) -> Tick:
    return Tick(t, NOW + t, 7)


def request(method: bytes = b"GET", target: bytes = b"/a", **fields: bytes) -> Request:
    made = {b"host": HOST}
    made.update({name.replace("_", "-").encode(): value for name, value in fields.items()})
    return Request(method, target, CLIENT, fields=made, headers=list(made.items()))


def cache(**options: object) -> CacheStage:
    return CacheStage(
        MemoryStore(1 << 20, 1 << 16),
        name="c",
        redis_url=URL,
        purge_from=TrustedProxies.parse([CLIENT]),
        **options,  # type: ignore[arg-type]
    )


def stored_for(req: Request, headers: tuple[tuple[bytes, bytes], ...] = SIXTY, at: float = NOW) -> Stored:
    return make_stored(req, 200, headers, response_directives(headers, POLICY), at, at, POLICY)


def reply(*entries: tuple[Stored, bytes]) -> CallResult:
    """An HGETALL reply holding ``entries``, each under its variant's field."""
    value: list[bytes] = []
    for stored, body in entries:
        value += [variant_field(stored.vary_key), encode_entry(stored, body)]
    return CallResult(value)


def call_of(effect: Effect | None) -> Call:
    assert isinstance(effect, Call), effect
    return effect


def answered(effect: Effect | None, result: CallResult) -> Effect | None:
    call = call_of(effect)
    assert call.then is not None
    return call.then(result)


def status_of(answer: Effect | None) -> bytes:
    assert isinstance(answer, Answer), answer
    return dict(answer.headers)[b"Cache-Status"]


def stats(stage: CacheStage) -> dict[str, int]:
    return {
        dict(s.labels)["result"]: int(s.value) for s in stage.stats() if s.name == "distpat_cache_requests"
    }


def miss_then_store(
    stage: CacheStage, req: Request, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = SIXTY
) -> Effect | None:
    """A GET that Redis knows nothing of, led upstream and stored: on_body's effect."""
    joined = answered(stage.on_request(req, tick()), CallResult([]))
    assert isinstance(joined, Join), joined
    assert isinstance(joined.then(Flight(FlightRole.LEADER)), Forward)
    amend = stage.on_response(req, Response(200, headers, upstream="b1"), tick(0.01))
    assert isinstance(amend, Amend)
    assert dict(amend.add)[b"Cache-Status"].endswith(b"; stored")
    return stage.on_body(req, Response(200, headers, upstream="b1"), body, tick(0.01))


# -- the lookup before each decision -----------------------------------------------------------


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_the_first_effect_of_a_get_is_an_hgetall_of_the_urls_hash(method: bytes) -> None:
    stage = cache()
    call = call_of(stage.on_request(request(method, b"/a?q=1", host=b"Example.TEST"), tick()))
    assert call.command == (b"HGETALL", b"distpat:cache:example.test/a?q=1")
    assert call.then is not None
    assert call.timeout == REDIS_TIMEOUT


def test_an_empty_reply_is_the_usual_miss_joining_the_flight() -> None:
    stage = cache()
    req = request()
    joined = answered(stage.on_request(req, tick()), CallResult([]))
    assert isinstance(joined, Join)
    assert joined.key == HOST + b"/a"
    forward = joined.then(Flight(FlightRole.LEADER))
    assert isinstance(forward, Forward)
    assert forward.capture == stage.capture
    assert stats(stage) == {"miss": 1}


def test_an_entry_in_the_reply_is_a_hit_without_going_upstream() -> None:
    stage = cache()
    req = request()
    entry = (stored_for(req, at=NOW - 5), b"from B")
    answer = answered(stage.on_request(req, tick()), reply(entry))
    assert isinstance(answer, Answer)
    assert answer.status == 200
    assert answer.body == b"from B"
    assert dict(answer.headers)[b"Age"] == b"5"
    assert status_of(answer) == b"distpat; hit; ttl=55"
    assert stage.on_response(req, Response(200, ()), tick()) is None  # the engine answered locally
    assert stage.on_done(req, Outcome(OutcomeKind.LOCAL, 200), tick()) is None  # nothing to write
    assert len(stage.store) == 1
    assert stats(stage) == {"hit": 1}


def test_a_variant_gone_from_redis_is_removed_locally() -> None:
    stage = cache()
    vary = (*SIXTY, (b"Vary", b"Accept-Encoding"))
    gzip, br = request(accept_encoding=b"gzip"), request(accept_encoding=b"br")
    for req, body in ((gzip, b"gz"), (br, b"br")):
        stage.store.put(HOST + b"/a", stored_for(req, vary), body)
    assert len(stage.store) == 2
    # another process purged the URL, then stored only the gzip variant again
    answer = answered(
        stage.on_request(request(accept_encoding=b"gzip"), tick()), reply((stored_for(gzip, vary), b"gz2"))
    )
    assert isinstance(answer, Answer)
    assert answer.body == b"gz2"
    variants = stage.store.variants(HOST + b"/a")
    assert variants is not None
    assert list(variants) == [(b"gzip",)]
    joined = answered(stage.on_request(br, tick()), reply((stored_for(gzip, vary), b"gz2")))
    assert isinstance(joined, Join)
    assert br.notes["c"].status == b"distpat; fwd=vary-miss"  # type: ignore[attr-defined]


def test_a_url_gone_from_redis_is_a_miss_here() -> None:
    stage = cache()
    req = request()
    stage.store.put(HOST + b"/a", stored_for(req), b"old")
    assert isinstance(answered(stage.on_request(req, tick()), CallResult([])), Join)
    assert len(stage.store) == 0


def test_an_unchanged_entry_keeps_its_local_entry_and_prebuilt_answer() -> None:
    stage = cache()
    req = request()
    stored = stored_for(req)
    local = stage.store.put(HOST + b"/a", stored, b"same")
    first = answered(stage.on_request(req, tick()), reply((stored, b"same")))
    second = answered(stage.on_request(request(), tick(0.5)), reply((stored, b"same")))
    assert isinstance(first, Answer)
    assert first is second
    variants = stage.store.variants(HOST + b"/a")
    assert variants is not None
    assert list(variants.values()) == [local]
    # a changed body from Redis replaces it
    third = answered(stage.on_request(request(), tick(0.5)), reply((stored, b"new")))
    assert isinstance(third, Answer)
    assert third.body == b"new"
    assert third is not first
    variants = stage.store.variants(HOST + b"/a")
    assert variants is not None
    assert list(variants.values()) != [local]


@pytest.mark.parametrize(
    "failure",
    [
        CallResult(error="ERR something broke"),
        CallResult(error=UNAVAILABLE),
        CallResult(b"not a list"),
        CallResult([b"odd"]),
    ],
    ids=["error-reply", "unavailable", "wrong-shape", "odd-list"],
)
def test_a_failing_redis_decides_with_the_local_copy(failure: CallResult) -> None:
    stage = cache()
    req = request()
    stage.store.put(HOST + b"/a", stored_for(req), b"mine")
    answer = answered(stage.on_request(req, tick()), failure)
    assert isinstance(answer, Answer)
    assert answer.body == b"mine"
    assert len(stage.store) == 1  # kept as it is
    other = request(target=b"/b")
    assert isinstance(answered(stage.on_request(other, tick()), failure), Join)  # no copy: a miss
    assert stats(stage) == {"hit": 1, "miss": 1, "redis_error": 2}


def test_a_corrupt_field_is_skipped_and_counted() -> None:
    stage = cache()
    req = request()
    good = reply((stored_for(req), b"ok"))
    assert isinstance(good.value, list)
    result = CallResult([*good.value, b"\x01\x02", b"garbage"])
    answer = answered(stage.on_request(req, tick()), result)
    assert isinstance(answer, Answer)
    assert answer.body == b"ok"
    assert stats(stage) == {"hit": 1, "redis_corrupt": 1}


# -- writing through ---------------------------------------------------------------------------


def test_a_stored_miss_is_written_through_as_a_fire_and_forget_eval() -> None:
    stage = cache()
    req = request()
    headers = (*SIXTY, (b"Cache-Tag", b"t1"), (b"Content-Type", b"text/plain"))
    call = call_of(miss_then_store(stage, req, b"body!", headers))
    assert call.then is None
    command = call.command
    assert command[:2] == (b"EVAL", STORE_SCRIPT)
    assert command[2:5] == (b"2", hash_key(HOST + b"/a"), tag_key(b"t1"))
    field, value, ttl = command[5:]
    stored, body = decode_entry(value)
    assert field == variant_field(stored.vary_key)
    assert body == b"body!"
    assert stored.status == 200
    assert stored.lifetime == 60
    assert stored.tags == frozenset({b"t1"})
    assert (b"Content-Type", b"text/plain") in stored.headers
    assert 59_000 <= int(ttl) <= 60_000  # the rest of its 60 s freshness
    assert len(stage.store) == 1
    # on_done has nothing more to send
    assert stage.on_done(req, Outcome(OutcomeKind.ANSWERED, 200, "b1"), tick(0.02)) is None


def test_what_one_stage_writes_another_reads_as_a_hit() -> None:
    a, b = cache(), cache()
    req = request()
    call = call_of(miss_then_store(a, req, b"shared"))
    field, value = call.command[-3:-1]
    answer = answered(b.on_request(request(), tick(1)), CallResult([field, value]))
    assert isinstance(answer, Answer)
    assert answer.body == b"shared"
    assert status_of(answer).startswith(b"distpat; hit; ttl=")


def test_a_response_too_large_to_store_is_not_written() -> None:
    stage = CacheStage(MemoryStore(1 << 20, 300), name="c", redis_url=URL)
    assert miss_then_store(stage, request(), b"x" * 400) is None
    assert stats(stage).get("too_large") == 1


def test_a_304_refresh_is_written_through_from_on_done() -> None:
    stage = cache()
    req = request(cache_control=b"no-cache")
    headers = (*SIXTY, (b"ETag", b'"v1"'))
    stage.store.put(HOST + b"/a", stored_for(req, headers, at=NOW - 100), b"kept")
    forward = answered(stage.on_request(req, tick()), CallResult(error=UNAVAILABLE))
    assert isinstance(forward, Forward)
    assert (b"If-None-Match", b'"v1"') in forward.add
    answer = stage.on_response(req, Response(304, ((b"ETag", b'"v1"'), *SIXTY), upstream="b1"), tick(0.01))
    assert isinstance(answer, Answer)
    assert answer.body == b"kept"
    call = call_of(stage.on_done(req, Outcome(OutcomeKind.LOCAL, 200), tick(0.02)))
    assert call.then is None
    assert call.command[:2] == (b"EVAL", STORE_SCRIPT)
    stored, body = decode_entry(call.command[-2])
    assert body == b"kept"
    assert stored.response_time == NOW + 0.01


# -- invalidation and purges -------------------------------------------------------------------


def test_a_post_that_succeeds_deletes_the_urls_hashes() -> None:
    stage = cache()
    for target in (b"/a", b"/b"):
        stage.store.put(HOST + target, stored_for(request(target=target)), b"x")
    req = request(b"POST", b"/a")
    assert stage.on_request(req, tick()) is None  # no lookup for an unsafe method
    stage.on_response(req, Response(201, ((b"Location", b"/b"),), upstream="b1"), tick(0.01))
    call = call_of(stage.on_done(req, Outcome(OutcomeKind.ANSWERED, 201, "b1"), tick(0.02)))
    assert call.then is None
    assert call.command == (b"DEL", hash_key(HOST + b"/a"), hash_key(HOST + b"/b"))
    assert len(stage.store) == 0
    assert stats(stage) == {"invalidation": 1}


def test_a_post_that_fails_deletes_nothing() -> None:
    stage = cache()
    req = request(b"POST", b"/a")
    assert stage.on_request(req, tick()) is None
    stage.on_response(req, Response(500, (), upstream="b1"), tick(0.01))
    assert stage.on_done(req, Outcome(OutcomeKind.ANSWERED, 500, "b1"), tick(0.02)) is None


def purged(answer: Effect | None) -> bytes:
    assert isinstance(answer, Answer), answer
    assert answer.status == 200
    return answer.body


@pytest.mark.parametrize(
    ("fields", "script", "keys"),
    [
        ({}, PURGE_SCRIPT, (b"1", hash_key(HOST + b"/a"))),
        ({"x_purge": b"prefix"}, BAN_PREFIX_SCRIPT, (b"0",)),
        ({"x_purge_tag": b"t1"}, BAN_TAG_SCRIPT, (b"1", tag_key(b"t1"))),
    ],
    ids=["key", "prefix", "tag"],
)
def test_a_purge_answers_the_count_redis_gives(
    fields: dict[str, bytes], script: bytes, keys: tuple[bytes, ...]
) -> None:
    stage = cache()
    stage.store.put(HOST + b"/a", stored_for(request(), (*SIXTY, (b"Cache-Tag", b"t1"))), b"x")
    call = call_of(stage.on_request(request(b"PURGE", **fields), tick()))
    assert call.command[:2] == (b"EVAL", script)
    assert call.command[2 : 2 + len(keys)] == keys
    assert len(stage.store) == 0  # the local copy goes at once
    assert call.then is not None
    assert purged(call.then(CallResult(3))) == b'{"purged": 3}\n'
    assert purged(call.then(CallResult(0))) == b'{"purged": 1}\n'  # never fewer than went here
    assert purged(call.then(CallResult(error=UNAVAILABLE))) == b'{"purged": 1}\n'
    assert purged(call.then(CallResult(b"three"))) == b'{"purged": 1}\n'
    assert stats(stage) == {"purge": 1, "redis_error": 2}


def test_a_purge_from_elsewhere_is_refused_without_a_call() -> None:
    stage = cache()
    req = Request(b"PURGE", b"/a", "198.51.100.7", fields={b"host": HOST})
    answer = stage.on_request(req, tick())
    assert isinstance(answer, Answer)
    assert answer.status == 405


def test_a_purge_of_several_tags_reaches_redis() -> None:
    stage = cache()
    req = request()
    stored = stored_for(req, (*SIXTY, (b"Cache-Tag", b"t1")))
    stage.store.put(HOST + b"/a", stored, b"x")
    effect = stage.on_request(request(b"PURGE", b"/", x_purge_tag=b"t1, t2"), tick())
    assert isinstance(effect, Call), effect
