"""One request's way through the stages inside an aiohttp application: the effect interpreter.

:class:`Exchange` drives a :class:`~distpat.core.pipeline.Run` (the pure part, shared with
:mod:`distpat.net`) and carries out what it asks for:

* :class:`~distpat.core.stage.Fetch`, :class:`~distpat.core.stage.Call` and
  :class:`~distpat.core.stage.Join`: sub-requests, a Redis round trip, a keyed flight; the
  result goes back to :meth:`Run.resume <distpat.core.pipeline.Run.resume>`;
* :class:`~distpat.core.stage.Answer`: a local response;
* :class:`~distpat.core.stage.Forward` to no pool (or to one of the middleware's
  ``handler_pools``): the application's handler (with the Forward's fields and target applied
  to the request it gets); to a named pool: the pool, through :mod:`distpat.aiohttp.proxy`,
  instead of the handler. The fields the stages always drop (``Stage.drops``) are dropped
  from both.

Every response head passes :meth:`Run.respond <distpat.core.pipeline.Run.respond>` before it
is sent (fields added and dropped, or the response replaced), the driver's own 502/504/500
answers too. The middleware sends the response itself, so it knows how it ended, and then
calls :meth:`Run.done <distpat.core.pipeline.Run.done>` once, in a ``finally``, with an
:class:`~distpat.core.stage.Outcome` whose kind says what happened on the way in. What
``on_done`` and ``on_body`` return (a Call, or a background Fetch through the application's
client session) runs as a task of the middleware's (:meth:`PipelineMiddleware.schedule
<distpat.aiohttp.middleware.PipelineMiddleware.schedule>`), never in the request's.

=================  ==============================================================
``LOCAL``          a stage answered (or the driver refused: a stage failed, 400)
``ANSWERED``       the handler or an upstream answered, and the answer went out whole
``UPSTREAM_FAILED``  no upstream reached, one broke (502, or a cut response), the
                   handler raised
``TIMED_OUT``      no response head in time (504), or the body stopped coming
``CLIENT_GONE``    the client left first (the task was cancelled, or a write failed)
=================  ==============================================================

A replacement answer from ``on_response`` changes the outcome's status and fields, not its
kind (a stale copy for an upstream's 502 is still ``UPSTREAM_FAILED``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from distpat.aiohttp.answer import EMPTY_STATUSES, amend_headers, answer_response, failure_answer
from distpat.aiohttp.flights import Lead
from distpat.aiohttp.proxy import open_upstream, relay, response_headers
from distpat.aiohttp.redis_calls import call_redis
from distpat.aiohttp.state import CLIENT_SESSION, FORWARD, NOTES, REDIS_CLIENT, STAGE_REQUEST
from distpat.aiohttp.subrequests import fetch
from distpat.aiohttp.view import fields_of, multidict, now, request_view, text
from distpat.core.pipeline import Run, StageError
from distpat.core.stage import (
    Amend,
    Answer,
    Call,
    CallResult,
    Fetch,
    Fields,
    Flight,
    Forward,
    Hold,
    Join,
    Outcome,
    OutcomeKind,
    Response,
    SubResult,
)
from distpat.errors import ConfigError, LocalProtocolError, ProtocolError, UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    from distpat.aiohttp.middleware import PipelineMiddleware

__all__ = ["EXCHANGE", "Exchange", "Handler"]

log = logging.getLogger("distpat.aiohttp")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("exchange")
"""The request's exchange, for the ``on_response_prepare`` signal (private to the driver)."""

_STAGE_FAILED = "a stage failed (see the server log)"


class Exchange:
    """One request through one :class:`~distpat.aiohttp.middleware.PipelineMiddleware`."""

    __slots__ = (
        "driver",
        "request",
        "run",
        "started",
        "responded",
        "leads",
        "kind",
        "status",
        "upstream",
        "fields",
        "body",
        "sent",
    )

    def __init__(self, driver: PipelineMiddleware, request: web.Request) -> None:
        self.driver = driver
        self.request = request
        self.run: Run = driver.pipeline.run(request_view(request, driver.pipeline, driver.pools))
        self.started = time.monotonic()
        self.responded = False
        """Run.respond has been called (by the middleware, or the on_response_prepare signal)."""
        self.leads: list[Lead] = []
        self.kind: OutcomeKind | None = None
        self.status = 0
        self.upstream: str | None = None
        self.fields: Fields = ()
        self.body: bytes | None = None
        self.sent = 0

    # -- the way in ----------------------------------------------------------------------

    async def serve(self, handler: Handler) -> web.StreamResponse:
        request = self.request
        if self.driver.publish:
            request[EXCHANGE] = self
            request[STAGE_REQUEST] = self.run.request
            request[NOTES] = self.run.request.notes
        try:
            return await self._serve(handler)
        except asyncio.CancelledError:
            if self.kind is None:
                self.kind = OutcomeKind.CLIENT_GONE
            raise
        except BaseException:
            if self.kind is None:
                self.kind, self.status = OutcomeKind.UPSTREAM_FAILED, 500
            raise
        finally:
            self._finish()

    async def _serve(self, handler: Handler) -> web.StreamResponse:
        run = self.run
        try:
            effect = run.start(now())
            while isinstance(effect, (Fetch, Call, Join, Hold)):
                result = await self._carry_out(effect)
                effect = run.resume(result, now())
        except (StageError, ConfigError) as exc:
            log.error("%s %s: %s", self.request.method, self.request.raw_path[:200], exc, exc_info=exc)
            return await self._answer(failure_answer(500, _STAGE_FAILED), OutcomeKind.LOCAL)
        if isinstance(effect, Answer):
            if effect.reason:
                log.info("%s %s: answered %d: %s", self.request.method, self.request.raw_path[:200],
                         effect.status, effect.reason)  # fmt: skip
            return await self._answer(effect, OutcomeKind.LOCAL)
        driver = self.driver
        drops = driver.pipeline.drops
        if drops:  # fields a stage sets itself (a variant header): a client's own are never passed on
            effect = effect.merge(Forward(drop=drops))
        if driver.publish:
            self.request[FORWARD] = effect
        driver.decided(self.request, self.run.request, effect)
        if effect.mirror:
            driver.warn_once("mirror", "Forward.mirror is not carried out by the aiohttp driver")
        if effect.pool is None or effect.pool in driver.handler_pools:
            return await self._application(handler, effect)
        return await self._proxy(effect)

    async def _carry_out(
        self, effect: Fetch | Call | Join | Hold
    ) -> tuple[SubResult, ...] | CallResult | Flight | None:
        if isinstance(effect, Hold):  # inside the request's own task: nothing else waits on it
            await asyncio.sleep(effect.delay)
            return None
        if isinstance(effect, Fetch):
            return await fetch(
                self._session(),
                self.driver.pools,
                effect,
                connect_timeout=self.driver.settings.connect_timeout,
            )
        if isinstance(effect, Call):
            return await call_redis(self.request.config_dict.get(REDIS_CLIENT), effect)
        flight, lead = await self.driver.flights.join(effect)
        if lead is not None:
            self.leads.append(lead)
        return flight

    def _session(self) -> aiohttp.ClientSession:
        session = self.request.config_dict.get(CLIENT_SESSION)
        if session is None:
            raise ConfigError(
                "no client session: add the middleware's cleanup_ctx to the application "
                "(app.cleanup_ctx.append(middleware.cleanup_ctx), or use distpat.aiohttp.setup(app, ...); "
                "a shard_handler alone: app.cleanup_ctx.append(distpat.aiohttp.client_context()))"
            )
        return session

    # -- the application's handler -------------------------------------------------------

    async def _application(self, handler: Handler, forward: Forward) -> web.StreamResponse:
        request = self.request
        if forward.add or forward.drop or forward.target is not None:
            headers = multidict(
                tuple((n, v) for n, v in request.raw_headers if n.lower() not in forward.drop) + forward.add
            )
            target = text(forward.target) if forward.target is not None else request.raw_path
            request = request.clone(headers=headers, rel_url=target)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # an answer like any other, for the stages and the outcome
            response = web.Response(status=exc.status, reason=exc.reason, body=exc.body, headers=exc.headers)
        fields = fields_of(response)
        name = self.driver.handler_upstream
        self.upstream = name
        if response.prepared:  # the handler wrote it itself (a stream, a WebSocket)
            if not self.responded:
                self.driver.warn_once(
                    "prepared",
                    "a handler sent its response itself before the stages saw it; register "
                    "middleware.on_response_prepare (setup(app, ...) does) for their fields to reach it",
                )
                self._respond(Response(response.status, fields, name))
            self._ended(OutcomeKind.ANSWERED, response.status, fields)
            return response
        head = Response(response.status, fields, name)
        amend, replaced = self._respond(head)
        if replaced is not None:
            return await self._send_answer(replaced, name, OutcomeKind.ANSWERED)
        amend_headers(response.headers, amend)
        # a body the handler set (bytes, text, JSON) is captured whole, an empty one too; a payload
        # aiohttp writes itself (a file, a stream) is not, and the stages' on_body is not called
        body = None
        if isinstance(response, web.Response):
            body = b"" if response.body is None else response.body  # None: no body was set
        if forward.capture and isinstance(body, bytes) and len(body) <= forward.capture:
            self.body = body
            self._captured(head, body)
        sent = len(body) if isinstance(body, bytes) and not self._empty(response.status) else 0
        return await self._send(response, OutcomeKind.ANSWERED, fields, sent)

    def amend_prepared(self, response: web.StreamResponse) -> None:
        """The ``on_response_prepare`` signal for a response the handler prepares itself:
        the stages see its head, their fields are added; a replacement cannot be sent."""
        head = Response(response.status, fields_of(response), self.driver.handler_upstream)
        amend, replaced = self._respond(head)
        if replaced is not None:
            log.warning(
                "%s %s: a stage replaced a response the handler sends itself; the handler's is sent",
                self.request.method, self.request.raw_path[:200],
            )  # fmt: skip
        amend_headers(response.headers, amend)

    # -- a pool --------------------------------------------------------------------------

    async def _proxy(self, forward: Forward) -> web.StreamResponse:
        driver = self.driver
        pool = driver.pools.get(forward.pool)
        if pool is None:
            log.error("%s %s: a stage forwarded to pool %r, which is not configured",
                      self.request.method, self.request.raw_path[:200], forward.pool)  # fmt: skip
            return await self._answer(
                failure_answer(500, f"no pool named {forward.pool!r}"), OutcomeKind.UPSTREAM_FAILED
            )
        try:
            session = self._session()
        except ConfigError as exc:
            log.error("%s %s: %s", self.request.method, self.request.raw_path[:200], exc)
            return await self._answer(failure_answer(500, "no client session"), OutcomeKind.UPSTREAM_FAILED)
        try:
            up = await open_upstream(session, self.request, pool, forward, driver.settings)
        except UpstreamTimeoutError as exc:
            log.warning("%s %s: %s", self.request.method, self.request.raw_path[:200], exc)
            return await self._answer(failure_answer(504, str(exc)), OutcomeKind.TIMED_OUT)
        except UpstreamError as exc:
            log.warning("%s %s: %s", self.request.method, self.request.raw_path[:200], exc)
            return await self._answer(failure_answer(502, str(exc)), OutcomeKind.UPSTREAM_FAILED)
        except ProtocolError as exc:
            kind = OutcomeKind.UPSTREAM_FAILED if isinstance(exc, LocalProtocolError) else OutcomeKind.LOCAL
            return await self._answer(failure_answer(exc.status, str(exc)), kind)
        self.upstream = up.upstream.name
        head = Response(up.response.status, up.fields, up.upstream.name)
        try:
            amend, replaced = self._respond(head)
        except BaseException:
            up.close()
            raise
        if replaced is not None:
            up.close()
            return await self._send_answer(replaced, up.upstream.name, OutcomeKind.ANSWERED)
        headers = response_headers(up, driver.settings)
        amend_headers(headers, amend)
        relayed = await relay(self.request, up, headers, capture=forward.capture)
        if relayed.body is not None:
            self.body = relayed.body
            self._captured(head, relayed.body)
        status = relayed.response.status if relayed.response.prepared else 0
        self._ended(relayed.kind, status, up.fields, relayed.sent)
        return relayed.response

    # -- answers -------------------------------------------------------------------------

    def _respond(self, head: Response) -> tuple[Amend | None, Answer | None]:
        self.responded = True
        try:
            return self.run.respond(head, now())
        except StageError as exc:
            log.error("%s %s: %s", self.request.method, self.request.raw_path[:200], exc, exc_info=exc)
            return None, failure_answer(500, _STAGE_FAILED)

    async def _answer(self, answer: Answer, kind: OutcomeKind) -> web.StreamResponse:
        """A local or failure answer: through the stages' on_response, then sent."""
        amend, replaced = self._respond(Response(answer.status, answer.headers, None))
        if replaced is not None:
            return await self._send_answer(replaced, None, kind)
        return await self._send_answer(answer, None, kind, amend)

    async def _send_answer(
        self, answer: Answer, upstream: str | None, kind: OutcomeKind, amend: Amend | None = None
    ) -> web.StreamResponse:
        response = answer_response(answer)
        amend_headers(response.headers, amend)
        self.upstream = upstream
        sent = 0 if self._empty(answer.status) else len(answer.body)
        return await self._send(response, kind, answer.headers, sent)

    def _empty(self, status: int) -> bool:
        return status in EMPTY_STATUSES or self.request.method == "HEAD"

    async def _send(
        self, response: web.StreamResponse, kind: OutcomeKind, fields: Fields, sent: int
    ) -> web.StreamResponse:
        try:
            await response.prepare(self.request)
            await response.write_eof()
        except ConnectionError:
            self._ended(OutcomeKind.CLIENT_GONE, response.status if response.prepared else 0, fields)
            return response
        self._ended(kind, response.status, fields, sent)
        return response

    def _ended(self, kind: OutcomeKind, status: int, fields: Fields, sent: int = 0) -> None:
        self.kind, self.status, self.fields, self.sent = kind, status, fields, sent

    def _captured(self, head: Response, body: bytes) -> None:
        if not self.driver.pipeline.wants_body:
            return
        try:
            effects = self.run.body(head, body, now())
        except StageError as exc:
            log.error(
                "%s %s: %s", self.request.method, self.request.raw_path[:200], exc, exc_info=exc.__cause__
            )
            return
        self._schedule(effects)

    # -- the end -------------------------------------------------------------------------

    def _finish(self) -> None:
        outcome = Outcome(
            self.kind if self.kind is not None else OutcomeKind.UPSTREAM_FAILED,
            status=self.status,
            upstream=self.upstream,
            headers=self.fields,
            body=self.body,
            received=self.request.content.total_bytes,
            sent=self.sent,
            duration=time.monotonic() - self.started,
        )
        effects = self.run.done(outcome, now())
        for lead in self.leads:
            self.driver.flights.land(lead, outcome)
        for error in self.run.errors:
            log.error(
                "%s %s: %s", self.request.method, self.request.raw_path[:200], error, exc_info=error.__cause__
            )
        if effects:
            self._schedule(effects)

    def _schedule(self, effects: list[Call | Fetch]) -> None:
        """The stages' fire-and-forget effects, as the middleware's tasks: the response does not
        wait for them (``on_done``'s start once it has gone out)."""
        config = self.request.config_dict
        self.driver.schedule(
            self.run, effects, redis=config.get(REDIS_CLIENT), session=config.get(CLIENT_SESSION)
        )
