"""The stage pipeline with no sockets and no loop: effects, continuations, order, exactly-once completion.

Each stage here records the calls it gets; the tests feed a request and a tick, check the
effect, and call continuations with made-up results, as docs/pipeline.md says a stage's own
tests should.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.http import local_response
from distpat.core.pipeline import PLAIN_FORWARD, Pipeline, StageError
from distpat.core.stage import (
    ALL_FIELDS,
    Amend,
    Answer,
    Call,
    CallResult,
    Effect,
    Fetch,
    Flight,
    FlightRole,
    Forward,
    Hold,
    Join,
    Outcome,
    OutcomeKind,
    Request,
    Response,
    Stage,
    SubRequest,
    SubResult,
    Tick,
)
from distpat.errors import ConfigError, LocalProtocolError

TICK = Tick(mono=100.0, wall=1_800_000_000.0, rand=0x1234_5678_9ABC_DEF0)


def request(target: bytes = b"/", method: bytes = b"GET") -> Request:
    return Request(method, target, client="192.0.2.7", fields={b"x-user": b"ann"})


class Recorder(Stage):
    """Answers with a fixed effect and records every call, in one log shared by the pipeline."""

    kind = "recorder"

    def __init__(self, name: str, log: list[str], effect: Effect | None = None, **kw: object) -> None:
        self.name = name
        self.log = log
        self.effect = effect
        self.amend = kw.get("amend")
        self.replace = kw.get("replace")

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        self.log.append(f"request:{self.name}")
        return self.effect

    def on_response(self, request: Request, response: Response, tick: Tick) -> Amend | Answer | None:
        self.log.append(f"response:{self.name}:{response.status}")
        if isinstance(self.replace, Answer):
            return self.replace
        return self.amend if isinstance(self.amend, Amend) else None

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call | None:
        self.log.append(f"done:{self.name}:{outcome.kind.value}")
        return None


def test_forward_values_merge_in_order() -> None:
    a = Forward(pool="a", add=((b"X-A", b"1"),), drop=frozenset({b"x-drop"}), mirror=("m1",), capture=10)
    b = Forward(order=("h:1", "h:2"), add=((b"X-B", b"2"),), target=b"/new", respond=((b"X-R", b"r"),))
    merged = a.merge(b)
    assert merged.pool == "a"  # b named no pool
    assert merged.order == ("h:1", "h:2")
    assert merged.add == ((b"X-A", b"1"), (b"X-B", b"2"))
    assert merged.drop == frozenset({b"x-drop"})
    assert merged.target == b"/new"
    assert merged.respond == ((b"X-R", b"r"),)
    assert merged.mirror == ("m1",)
    assert merged.capture == 10
    # a later pool replaces the earlier pool and its order
    assert Forward(pool="a", order=("h:1",)).merge(Forward(pool="b")).order == ()


def test_stages_run_in_order_and_the_first_answer_ends_the_request_side() -> None:
    log: list[str] = []
    pipeline = Pipeline(
        [
            Recorder("one", log, Forward(add=((b"X-One", b"1"),))),
            Recorder("two", log, Answer(429, b"slow down\n")),
            Recorder("three", log, Forward(pool="never")),
        ]
    )
    run = pipeline.run(request())
    effect = run.start(TICK)
    assert isinstance(effect, Answer)
    assert effect.status == 429
    assert log == ["request:one", "request:two"]
    run.respond(Response(429, ()), TICK)
    run.done(Outcome(OutcomeKind.LOCAL, 429), TICK)
    # the stage that answered does not see its own answer; the ones before it do, and all are done
    assert log[2:] == ["response:one:429", "done:two:local", "done:one:local"]


def test_no_stage_with_anything_to_say_gives_the_plain_forward() -> None:
    run = Pipeline([Recorder("quiet", [])]).run(request())
    assert run.start(TICK) is PLAIN_FORWARD


def test_response_stages_run_last_first_and_amendments_add_up() -> None:
    log: list[str] = []
    pipeline = Pipeline(
        [
            Recorder("outer", log, amend=Amend(add=((b"X-Outer", b"o"),))),
            Recorder(
                "inner", log, Forward(respond=((b"X-Respond", b"r"),)), amend=Amend(add=((b"X-Inner", b"i"),))
            ),
        ]
    )
    run = pipeline.run(request())
    assert isinstance(run.start(TICK), Forward)
    amend, replaced = run.respond(Response(200, ((b"Server", b"up"),), "h:1"), TICK)
    assert replaced is None
    assert amend is not None
    assert amend.add == ((b"X-Respond", b"r"), (b"X-Inner", b"i"), (b"X-Outer", b"o"))
    assert log == ["request:outer", "request:inner", "response:inner:200", "response:outer:200"]


def test_a_replacement_is_what_the_stages_outside_it_see() -> None:
    log: list[str] = []
    stored = Answer(200, b"stored body", headers=((b"ETag", b'"v1"'),))
    pipeline = Pipeline([Recorder("outer", log), Recorder("cache", log, replace=stored)])
    run = pipeline.run(request())
    run.start(TICK)
    amend, replaced = run.respond(Response(304, ((b"ETag", b'"v1"'),), "h:1"), TICK)
    assert replaced is stored
    assert amend is None
    assert log[-2:] == ["response:cache:304", "response:outer:200"]


def test_on_done_is_called_once_for_every_stage_that_saw_the_request() -> None:
    log: list[str] = []
    pipeline = Pipeline([Recorder("a", log), Recorder("b", log, Answer(204)), Recorder("c", log)])
    run = pipeline.run(request())
    run.start(TICK)
    assert run.done(Outcome(OutcomeKind.CLIENT_GONE), TICK) == []
    assert run.done(Outcome(OutcomeKind.ANSWERED, 200), TICK) == []  # a second call does nothing
    assert [entry for entry in log if entry.startswith("done")] == [
        "done:b:client_gone",
        "done:a:client_gone",
    ]


class Raising(Stage):
    kind = "raising"

    def __init__(self, where: str) -> None:
        self.where = where

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        if self.where == "request":
            raise KeyError("boom")
        return None

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call | None:
        if self.where == "done":
            raise RuntimeError("late boom")
        return None


def test_a_raising_stage_is_a_stage_error_naming_it_and_the_others_are_still_told() -> None:
    log: list[str] = []
    pipeline = Pipeline([Recorder("first", log), Raising("request")])
    run = pipeline.run(request())
    with pytest.raises(StageError, match=r"raising-2.*KeyError") as info:
        run.start(TICK)
    assert info.value.status == 500
    run.done(Outcome(OutcomeKind.LOCAL, 500), TICK)
    assert "done:first:local" in log

    run = Pipeline([Raising("done"), Recorder("after", log)]).run(request())
    run.start(TICK)
    run.done(Outcome(OutcomeKind.ANSWERED, 200), TICK)
    assert "done:after:answered" in log
    assert len(run.errors) == 1
    assert "late boom" in str(run.errors[0])


def test_a_stage_answering_something_that_is_not_an_effect_is_refused() -> None:
    run = Pipeline([Recorder("odd", [], effect=42)]).run(request())  # type: ignore[arg-type]
    with pytest.raises(StageError, match="not an effect"):
        run.start(TICK)


class Limiter(Stage):
    """A stage that asks Redis, then decides from the reply (the shape of a shared rate limiter)."""

    kind = "limiter"

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        def decide(result: CallResult) -> Effect | None:
            if result.error is not None:
                return Answer(503, result.error.encode())
            return Answer(429) if isinstance(result.value, int) and result.value > 2 else None

        return Call((b"INCR", b"k:" + request.client.encode()), then=decide)


def test_a_call_waits_and_its_continuation_decides() -> None:
    log: list[str] = []
    pipeline = Pipeline([Limiter(), Recorder("router", log, Forward(pool="p"))])
    run = pipeline.run(request())
    effect = run.start(TICK)
    assert isinstance(effect, Call)
    assert effect.command == (b"INCR", b"k:192.0.2.7")
    assert log == []  # the router waits for the limiter's answer
    final = run.resume(CallResult(value=1), TICK)
    assert isinstance(final, Forward)
    assert final.pool == "p"

    run = pipeline.run(request())
    run.start(TICK)
    assert isinstance(run.resume(CallResult(value=3), TICK), Answer)
    run = pipeline.run(request())
    run.start(TICK)
    refused = run.resume(CallResult(error="unavailable: connection refused"), TICK)
    assert isinstance(refused, Answer)
    assert refused.status == 503
    with pytest.raises(LocalProtocolError, match="nothing is pending"):
        run.resume(CallResult(value=1), TICK)


class Gather(Stage):
    kind = "gather"

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        def merge(results: tuple[SubResult, ...]) -> Effect:
            body = b",".join(r.body for r in results if r.ok)
            partial = any(not r.ok for r in results)
            return Answer(200, body, headers=((b"X-Partial", b"1" if partial else b"0"),))

        subs = (SubRequest("leaf-a", b"/search?q=x"), SubRequest("leaf-b", b"/search?q=x"))
        return Fetch(subs, then=merge, deadline=0.2, hedge_after=0.01, hedge_max=1)


def test_a_fetch_continuation_gets_complete_or_partial_results() -> None:
    run = Pipeline([Gather()]).run(request())
    fetch = run.start(TICK)
    assert isinstance(fetch, Fetch)
    results = (SubResult(fetch.requests[0], 200, body=b"a"), SubResult(fetch.requests[1], error="timeout"))
    answer = run.resume(results, TICK)
    assert isinstance(answer, Answer)
    assert answer.body == b"a"
    assert answer.headers == ((b"X-Partial", b"1"),)


class Coalesce(Stage):
    kind = "coalesce"

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        def woken(flight: Flight) -> Effect | None:
            if flight.role is FlightRole.LEADER:
                return Forward(capture=1024)
            if (
                flight.role is FlightRole.SHARED
                and flight.outcome is not None
                and flight.outcome.body is not None
            ):
                return Answer(200, flight.outcome.body)
            return None  # timed out or full: go upstream on its own

        return Join(request.target, then=woken, timeout=1.0)


def test_a_join_leads_or_shares_the_leaders_outcome() -> None:
    pipeline = Pipeline([Coalesce()])
    leader = pipeline.run(request(b"/hot"))
    assert isinstance(leader.start(TICK), Join)
    lead = leader.resume(Flight(FlightRole.LEADER), TICK)
    assert isinstance(lead, Forward)
    assert lead.capture == 1024
    waiter = pipeline.run(request(b"/hot"))
    waiter.start(TICK)
    shared = waiter.resume(Flight(FlightRole.SHARED, Outcome(OutcomeKind.ANSWERED, 200, body=b"hot")), TICK)
    assert shared == Answer(200, b"hot")
    late = pipeline.run(request(b"/hot"))
    late.start(TICK)
    assert late.resume(Flight(FlightRole.TIMED_OUT), TICK) is PLAIN_FORWARD


def test_the_pipeline_knows_what_to_prepare() -> None:
    class Reads(Stage):
        kind = "reads"
        reads = frozenset({b"Cookie", b"x-user"})

    pipeline = Pipeline([Reads(), Recorder("r", [])])
    assert pipeline.reads == frozenset({b"cookie", b"x-user"})
    assert not pipeline.all_fields
    assert pipeline.wants_response
    assert pipeline.wants_done
    assert not pipeline.wants_body

    class Everything(Stage):
        kind = "everything"
        reads = ALL_FIELDS

    assert Pipeline([Everything()]).all_fields
    assert not Pipeline([Everything()]).wants_response


def test_stage_names_are_unique() -> None:
    with pytest.raises(ConfigError, match="already taken"):
        Pipeline([Recorder("same", []), Recorder("same", [])])
    with pytest.raises(ConfigError, match=r"is not a distpat\.core\.stage\.Stage"):
        Pipeline([object()])  # type: ignore[list-item]
    named = Pipeline([Recorder("", []), Recorder("", [])])
    assert [s.name for s in named.stages] == ["recorder-1", "recorder-2"]


def test_effects_check_their_own_values() -> None:
    with pytest.raises(LocalProtocolError, match="final status"):
        Answer(101)
    with pytest.raises(LocalProtocolError, match="sets Content-Length itself"):
        Answer(200, headers=((b"Content-Length", b"3"),))
    with pytest.raises(LocalProtocolError, match="invalid field"):
        Answer(200, headers=((b"X-Evil", b"a\r\nSet-Cookie: x=1"),))
    with pytest.raises(LocalProtocolError, match="invalid field"):
        Forward(add=((b"Bad Name", b"v"),))
    with pytest.raises(LocalProtocolError, match="origin-form"):
        Forward(target=b"http://elsewhere/")
    with pytest.raises(LocalProtocolError, match="the engine's to set"):
        Amend(drop=frozenset({b"content-length"}))


@pytest.mark.parametrize("status", [204, 304])
def test_local_answers_without_content_have_no_body_and_no_length(status: int) -> None:
    data, body = local_response(status, ((b"ETag", b'"x"'),), b"ignored")
    assert body == 0
    head = data.decode("latin-1").lower()
    assert data.endswith(b"\r\n\r\n")
    assert "content-length" not in head
    assert "content-type" not in head
    assert 'etag: "x"' in head


def test_a_local_answer_to_head_has_the_get_length_and_no_body() -> None:
    data, body = local_response(200, (), b"twelve bytes", head_request=True)
    assert body == 0
    assert data.endswith(b"Content-Length: 12\r\n\r\n")
    get, size = local_response(200, (), b"twelve bytes")
    assert size == 12
    assert get.endswith(b"\r\n\r\ntwelve bytes")
    assert b"Content-Type: text/plain" in get


def test_a_local_answer_without_a_body_has_no_content_type() -> None:
    data, _ = local_response(200, (), b"")
    assert b"Content-Type" not in data
    assert b"Content-Length: 0\r\n" in data
    closing, _ = local_response(429, (), b"", close=True)
    assert closing.endswith(b"Connection: close\r\n\r\n")
    kept, _ = local_response(200, (), b"", http10=True)
    assert kept.endswith(b"Connection: keep-alive\r\n\r\n")


# Hypothesis: whatever the stages answer, the request side stops at the first Answer, each stage
# that saw the request is told of its end exactly once, and responses pass back last first.
_choice = st.sampled_from(["none", "forward", "answer"])


@given(st.lists(_choice, min_size=1, max_size=8), st.integers(min_value=1, max_value=3))
def test_every_stage_seen_is_done_exactly_once_in_reverse(choices: list[str], done_calls: int) -> None:
    log: list[str] = []
    effects: dict[str, Effect | None] = {
        "none": None,
        "forward": Forward(add=((b"X", b"1"),)),
        "answer": Answer(200),
    }
    stages = [Recorder(f"s{i}", log, effects[c]) for i, c in enumerate(choices)]
    run = Pipeline(stages).run(request())
    final = run.start(TICK)
    seen = choices.index("answer") + 1 if "answer" in choices else len(choices)
    assert run.entered == seen
    assert isinstance(final, Answer) == ("answer" in choices)
    run.respond(Response(200, ()), TICK)
    for _ in range(done_calls):
        run.done(Outcome(OutcomeKind.ANSWERED, 200), TICK)
    expected = [f"s{i}" for i in range(seen)]
    responders = expected[:-1] if "answer" in choices else expected  # not the one that answered
    assert [e.split(":")[1] for e in log if e.startswith("request")] == expected
    assert [e.split(":")[1] for e in log if e.startswith("response")] == responders[::-1]
    assert [e.split(":")[1] for e in log if e.startswith("done")] == expected[::-1]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (OutcomeKind.ANSWERED, 200),
        (OutcomeKind.UPSTREAM_FAILED, 502),
        (OutcomeKind.TIMED_OUT, 504),
        (OutcomeKind.CLIENT_GONE, 0),
        (OutcomeKind.LOCAL, 429),
    ],
)
def test_on_done_is_called_once_whatever_the_outcome(kind: OutcomeKind, status: int) -> None:
    log: list[str] = []
    run = Pipeline([Recorder("a", log), Recorder("b", log)]).run(request())
    run.start(TICK)
    for _ in range(3):  # a driver that reports the end more than once (the engine reports it once)
        run.done(Outcome(kind, status), TICK)
    assert [e for e in log if e.startswith("done")] == [f"done:b:{kind.value}", f"done:a:{kind.value}"]


class Delay(Stage):
    """Holds every request a while (a limiter's delayed excess), then lets the next stage decide."""

    kind = "delay"

    def __init__(self, then: bool) -> None:
        self.then = then

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        if self.then:
            return Hold(0.25, then=lambda _: Forward(add=((b"X-Held", b"1"),)))
        return Hold(0.25)


@pytest.mark.parametrize("then", [False, True])
def test_a_hold_waits_then_goes_on(then: bool) -> None:
    log: list[str] = []
    run = Pipeline([Delay(then), Recorder("router", log, Forward(pool="p"))]).run(request())
    held = run.start(TICK)
    assert isinstance(held, Hold)
    assert held.delay == 0.25
    assert log == []  # the next stage waits for the hold
    final = run.resume(None, TICK)
    assert isinstance(final, Forward)
    assert final.pool == "p"
    assert final.add == (((b"X-Held", b"1"),) if then else ())
    assert log == ["request:router"]
    with pytest.raises(LocalProtocolError, match="0 to 3600 seconds"):
        Hold(-1.0)
