"""The engine's interpreter of stage effects: one request's pipeline run, carried out.

The stages decide (distpat.core.stage, distpat.core.pipeline); this module does what they
asked, for one :class:`~distpat.net.exchange.Exchange`, with no policy of its own:

* a :class:`Forward` becomes the exchange's pool, preference order and head (its fields
  added or dropped, its target rewritten), a body capture and mirror copies;
* an :class:`Answer` becomes the exchange's local answer (framed by core/serialize.py);
* a :class:`Hold` waits on a loop timer; a :class:`Fetch`, :class:`Call` or :class:`Join` is
  handed to its carrier
  (:class:`~distpat.net.engine.Carriers`), and the exchange waits, without a task, until the
  carrier calls back; then the run goes on from that stage;
* when the exchange ends, however it ends, :func:`done` tells the stages once;
* the fire-and-forget effects of ``on_body`` and ``on_done`` are sent as they come (``on_done``'s
  once the request has ended), and the client's answer never waits on them: a :class:`Call` to
  the Redis carrier, a
  :class:`Fetch` to the sub-request carrier, bounded by its own deadline and cancelled when
  the server shuts down (:meth:`~distpat.net.subrequest.SubRequests.close`); its results go to
  :meth:`Run.landed <distpat.core.pipeline.Run.landed>` (the stage's ``then``; what it returns
  is ignored). A Fetch with no carrier configured is dropped, with a warning the first time.

A stage that raises costs its request a 500 (logged with the stage's name), never the
connection or the server.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING

from distpat.core.amend import amend_head
from distpat.core.http import error_response, local_response
from distpat.core.pipeline import Run, StageError
from distpat.core.serialize import error_body
from distpat.core.stage import (
    NO_TICK,
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
    Outcome,
    OutcomeKind,
    Request,
    Response,
    SubResult,
)

if TYPE_CHECKING:
    from distpat.net.engine import Carriers
    from distpat.net.exchange import Exchange

__all__ = [
    "MIRROR_MAX_BYTES",
    "begin",
    "body_captured",
    "done",
    "error_answer",
    "framed",
    "mirror_data",
    "replace_response",
    "respond",
    "through_stages",
]

log = logging.getLogger("distpat.pipeline")

MIRROR_MAX_BYTES = 1 << 20
"""A request larger than this (head and body as forwarded) is not mirrored (counted ``too_large``)."""


def begin(ex: Exchange, target: bytes, fields: dict[bytes, bytes] | None) -> None:
    """Run the pipeline for ``ex``'s request (``target`` in origin form, ``fields`` the ones the
    stages read), as far as it goes without waiting."""
    client = ex.client
    state = client.state
    pipeline = state.pipeline
    assert pipeline is not None
    request = Request(  # positional: a keyword call costs more, once per request
        ex.method,
        target,
        client.peer,
        state.settings.scheme,
        ex.http10,
        fields,
        ex.request_headers if pipeline.all_fields else None,
        state.pool_view,
    )
    request.complete = pipeline.all_fields  # every field captured in the pass (or the general one)
    run = ex.run = Run(pipeline, request)
    try:
        effect = run.start(state.make_tick() if pipeline.uses_tick else NO_TICK)
    except StageError as exc:
        effect = _failed(exc)
    _carry(ex, effect)


def _failed(exc: StageError) -> Answer:
    log.error("%s", exc, exc_info=exc.__cause__)
    return Answer(500, f"500 Internal Server Error: {exc}\n".encode(), reason=str(exc))


def _missing(what: str) -> Answer:
    message = f"a stage asked for {what}, which this server is not configured for"
    log.error("%s", message)
    return Answer(500, f"500 Internal Server Error: {message}\n".encode(), reason=message)


def _carry(ex: Exchange, effect: Effect) -> None:
    if isinstance(effect, Forward):
        _plan(ex, effect)
        return
    if isinstance(effect, Answer):
        ex.local = effect
        return
    carriers = ex.client.state.carriers
    ex.waiting = True
    if isinstance(effect, Hold):  # a timer, not a task: cancelled by done() if the client goes
        ex.pending = ex.client.loop.call_later(effect.delay, _resumed, ex, None)
        return
    if isinstance(effect, Call):
        if carriers.call is None:
            _resumed(ex, CallResult(error="unavailable: no Redis server is configured (--redis)"))
            return
        carriers.call(effect, lambda result: _resumed(ex, result))
    elif isinstance(effect, Fetch):
        if carriers.fetch is None:
            ex.waiting = False
            _carry(ex, _missing("sub-requests"))
            return
        ex.pending = carriers.fetch(effect, lambda results: _resumed(ex, results))
    else:  # Join
        if carriers.join is None:
            ex.waiting = False
            _carry(ex, _missing("request coalescing"))
            return
        key = effect.key

        def woken(flight: Flight) -> None:
            if flight.role is FlightRole.LEADER:
                ex.leads.append(key)
            _resumed(ex, flight)

        ticket = carriers.join(effect, woken)
        if ex.waiting:  # not woken at once (a leader is)
            ex.pending = ticket


def _resumed(ex: Exchange, result: tuple[SubResult, ...] | CallResult | Flight | None) -> None:
    """A carrier called back: the stage's continuation decides, then the stages after it."""
    ex.pending = None
    ex.waiting = False
    if ex.finished or ex.run is None:  # the client went away meanwhile
        return
    state = ex.client.state
    try:
        effect = ex.run.resume(result, state.make_tick())
    except StageError as exc:
        effect = _failed(exc)
    _carry(ex, effect)
    if not ex.waiting and ex.start_deferred:
        ex.start_deferred = False
        ex.start()


def _plan(ex: Exchange, fwd: Forward) -> None:
    state = ex.client.state
    group = state.pools.get(fwd.pool)
    if group is None:
        ex.local = _missing(f"pool {fwd.pool!r}")
        return
    ex.pool = group
    if fwd.order:
        order = group.resolve(fwd.order)
        if order is None:
            ex.local = _missing(f"upstreams {', '.join(fwd.order)} in pool {group.name!r}")
            return
        ex.order = order
    if fwd.target is not None or fwd.drop:
        ex.head = amend_head(ex.head, target=fwd.target, add=fwd.add, drop=fwd.drop)
    elif fwd.add:
        ex.head = ex.head[:-2] + fwd.add_lines + b"\r\n"
    if fwd.capture:
        ex.capture_left = fwd.capture
        ex.captured = []
    if fwd.mirror:
        groups = []
        for name in fwd.mirror:
            mirror = state.pools.get(name)
            if mirror is None:
                ex.local = _missing(f"mirror pool {name!r}")
                return
            groups.append(mirror)
        if state.carriers.mirror is None:
            ex.local = _missing("mirror copies")
            return
        ex.mirrors = tuple(groups)
        ex.mirror_buf = []


def respond(
    ex: Exchange, status: int, headers: list[tuple[bytes, bytes]], *, local: bool = False
) -> tuple[Amend | None, Answer | None]:
    """The response head passes back out through the stages: what they add, drop or put instead."""
    run = ex.run
    assert run is not None
    fields = tuple(headers)
    ex.response_fields = fields
    upstream = ex.upstream.name if ex.upstream is not None and ex.local is None and not local else None
    try:
        return run.respond(Response(status, fields, upstream), ex.client.state.make_tick())
    except StageError as exc:
        return None, _failed(exc)


_ERROR_FIELDS = ((b"Cache-Control", b"no-store"), (b"X-Content-Type-Options", b"nosniff"))


def through_stages(ex: Exchange, answer: Answer) -> Answer:
    """A local answer (a stage's, or the engine's own error) after the response stages saw it:
    with their fields added and dropped, or what one of them put in its place."""
    run = ex.run
    assert run is not None
    if (run.plan is None or not run.plan.respond) and not run.responders():
        ex.response_fields = answer.headers  # nothing to add: the answer as it is (for the Outcome)
        return answer
    amend, replaced = respond(ex, answer.status, list(answer.headers), local=True)
    if replaced is not None:
        return replaced
    if amend is None:
        return answer
    kept = [(n, v) for n, v in answer.headers if n.lower() not in amend.drop]
    return Answer(answer.status, answer.body, (*kept, *amend.add), answer.content_type, answer.reason)


def framed(ex: Exchange, answer: Answer) -> tuple[bytes, int]:
    """``answer`` as the bytes ``ex``'s client gets (RFC 9110 framing), and its body size."""
    usual = not ex.close_after and not ex.http10 and ex.method != b"HEAD"
    if usual and answer.wire:
        return answer.wire[0]
    data, size = local_response(
        answer.status,
        answer.headers,
        answer.body,
        content_type=answer.content_type,
        head_request=ex.method == b"HEAD",
        close=ex.close_after,
        http10=ex.http10,
    )
    if usual:
        answer.wire.append((data, size))
    return data, size


def error_answer(ex: Exchange, status: int, message: str) -> tuple[bytes, int]:
    """The engine's own error answer (502, 504) for a request the stages saw: its bytes and body
    size. It passes back out through the response stages like any answer, so a stage may add
    fields or put something in its place (a cache's stale copy: stale-if-error); the outcome stays
    the failure it was."""
    run = ex.run
    assert run is not None
    pipeline = ex.client.state.pipeline
    if pipeline is None or not pipeline.wants_response:
        extra = run.plan.respond if run.plan is not None else ()  # a variant's cookie
        data = error_response(status, message, close=ex.close_after, extra=extra)
        return data, len(data) - data.index(b"\r\n\r\n") - 4
    answer = through_stages(ex, Answer(status, error_body(status, message), _ERROR_FIELDS, reason=message))
    ex.status = answer.status
    return framed(ex, answer)


def replace_response(ex: Exchange, answer: Answer) -> None:
    """A stage put ``answer`` in place of the upstream's response (whose body is read and dropped)."""
    ex.to_client.clear()
    ex.discard = True
    ex.rechunk = False
    ex.status = answer.status
    data, ex.sent_bytes = framed(ex, answer)
    ex.to_client.append(data)


def body_captured(ex: Exchange) -> None:
    """A captured response body is complete: the stages get it."""
    run, captured = ex.run, ex.captured
    if run is None or captured is None:
        return
    body = b"".join(captured)
    ex.captured = [body]
    try:
        effects = run.body(
            Response(ex.status, ex.response_fields, ex.upstream.name if ex.upstream else None),
            body,
            ex.client.state.make_tick(),
        )
    except StageError as exc:
        log.error("%s", exc, exc_info=exc.__cause__)
        return
    _fire(ex, run, effects)


def done(ex: Exchange, kind: OutcomeKind) -> None:
    """``ex`` is over: each stage that saw it is told, once; its flights land; its waits end."""
    run = ex.run
    if run is None or run.finished:
        return
    state = ex.client.state
    pending, ex.pending = ex.pending, None
    if pending is not None:
        pending.cancel()
    if not ex.leads and (not run.pipeline.wants_done or not run.needs_done()):
        run.skip_done()  # nobody to tell (or nobody who wants it): only the decisions to count
        _count(state.count_decision, run)
        return
    captured = ex.captured
    outcome = Outcome(
        kind,
        status=ex.status if ex.response_started else 0,
        upstream=ex.upstream.name if ex.upstream is not None and ex.upstream_started else None,
        headers=ex.response_fields,
        body=captured[0] if captured is not None and len(captured) == 1 and ex.body_complete else None,
        received=ex.body_sent + ex.pending_bytes,
        sent=ex.sent_bytes,
        duration=perf_counter() - ex.started,
    )
    effects = run.done(outcome, state.make_tick())
    for error in run.errors:
        log.error("%s", error, exc_info=error.__cause__)
    _fire(ex, run, effects)
    _count(state.count_decision, run)
    land = state.carriers.land
    if ex.leads and land is not None:
        for key in ex.leads:
            land(key, outcome)
        ex.leads.clear()


def _count(count: Callable[[str, str], None] | None, run: Run) -> None:
    if count is None:
        return
    request = run.request
    if not run.pipeline.decides:  # Stage.decision as the base class has it: what each noted
        for name, note in request.notes.items():
            if note.__class__ is str:
                count(name, note)
        return
    for stage in run.pipeline.stages[: run.entered]:
        decision = stage.decision(request)
        if decision is not None:
            count(stage.name, decision)


def _fire(ex: Exchange, run: Run, effects: list[Call | Fetch]) -> None:
    """Send the stages' fire-and-forget effects; nothing of the exchange waits on them."""
    if not effects:
        return
    carriers = ex.client.state.carriers
    for effect in effects:
        if isinstance(effect, Fetch):
            if carriers.fetch is None:
                _dropped(
                    carriers, "fetch", "a stage's background Fetch dropped: this server makes no sub-requests"
                )
            else:
                carriers.fetch(effect, functools.partial(_landed, ex, run, effect))
        elif carriers.call is None:
            log.warning("a stage's Redis call %r dropped: no Redis server is configured", effect.command[:1])
        else:
            carriers.call(effect, _ignore)


def _dropped(carriers: Carriers, what: str, message: str) -> None:
    if what not in carriers.dropped:
        carriers.dropped.add(what)
        log.warning("%s (said once)", message)


def _landed(ex: Exchange, run: Run, fetch: Fetch, results: tuple[SubResult, ...]) -> None:
    """A background Fetch came back (from a loop callback of its own): the stage's ``then``, and
    the fire-and-forget Call it may answer with."""
    try:
        call = run.landed(fetch, results)
    except StageError as exc:
        log.error("%s", exc, exc_info=exc.__cause__)
        return
    if call is not None:
        _fire(ex, run, [call])


def _ignore(result: CallResult) -> None:
    if result.error is not None:
        log.warning("a stage's fire-and-forget Redis call failed: %s", result.error)


def mirror_data(ex: Exchange, data: bytes) -> None:
    """``data`` went to the primary upstream: the mirror copies get it too, sent once complete."""
    buf = ex.mirror_buf
    if buf is None:
        return
    buf.append(data)
    ex.mirror_bytes += len(data)
    state = ex.client.state
    if ex.mirror_bytes > MIRROR_MAX_BYTES:
        ex.mirror_buf = None
        if state.count_mirror is not None:
            for group in ex.mirrors:
                state.count_mirror(group.name, "too_large")
        return
    if ex.body_done:
        ex.mirror_buf = None
        copy = b"".join(buf)
        send = state.carriers.mirror
        assert send is not None  # checked in _plan
        for group in ex.mirrors:
            send(group, copy)
