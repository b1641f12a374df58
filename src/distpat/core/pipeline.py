"""A pipeline of stages, and one request's way through it: pure, so both drivers share it.

:class:`Pipeline` is built once from the configured stages and knows what the engine must
prepare for them (the request fields they read, whether any looks at responses). A
:class:`Run` is one request's passage: the driver (``net/`` or ``distpat.aiohttp``) calls
:meth:`Run.start`, carries out the effect it gets back, hands a pending effect's result to
:meth:`Run.resume`, and so on until the effect is final (:class:`~distpat.core.stage.Answer`
or a merged :class:`~distpat.core.stage.Forward`). On the way back it calls
:meth:`Run.respond` with the response head, :meth:`Run.body` with a captured body, and
:meth:`Run.done` once the request is over: the run guarantees each stage's ``on_done`` is
called exactly once, however often a driver calls it.

``body`` and ``done`` hand back the stages' fire-and-forget effects, a
:class:`~distpat.core.stage.Call` or a :class:`~distpat.core.stage.Fetch` each: the driver
carries them out after the request, off its client's way, and gives a background Fetch's
results to :meth:`Run.landed`, which calls the stage's ``then`` and ignores what it returns.

::

    run = pipeline.run(request)
    effect = run.start(tick)
    while isinstance(effect, (Fetch, Call, Join, Hold)):
        effect = run.resume(carry_out(effect), tick)
    # effect is an Answer or a Forward
"""

from __future__ import annotations

from collections.abc import Sequence

from distpat.core.stage import (
    ALL_FIELDS,
    Amend,
    Answer,
    Call,
    CallResult,
    Effect,
    Fetch,
    Flight,
    Forward,
    Hold,
    Join,
    Outcome,
    Request,
    Response,
    Stage,
    SubResult,
    Tick,
)
from distpat.errors import ConfigError, LocalProtocolError

__all__ = ["PLAIN_FORWARD", "Pipeline", "Run", "StageError"]

PLAIN_FORWARD = Forward()
"""The effect of a pipeline whose stages had nothing to say: the default pool's balancer chooses."""

_PENDING = (Fetch, Call, Join, Hold)


class StageError(LocalProtocolError):
    """A stage raised, or answered with something that is not an effect: the client gets 500."""

    def __init__(self, stage: Stage, message: str) -> None:
        super().__init__(f"stage {stage.name or stage.kind!r}: {message}", status=500)
        self.stage = stage


class Pipeline:
    """Stages in request order, and what the engine must prepare for them."""

    __slots__ = (
        "stages",
        "reads",
        "all_fields",
        "wants_response",
        "wants_body",
        "wants_done",
        "decides",
        "drops",
        "uses_tick",
        "_respond_at",
    )

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, Stage):
                raise ConfigError(f"stage {i + 1}: {stage!r} is not a distpat.core.stage.Stage")
            if not stage.name:
                stage.name = f"{stage.kind}-{i + 1}"
            if stage.name in seen:
                raise ConfigError(
                    f"stage {i + 1}: the name {stage.name!r} is already taken by an earlier stage"
                )
            seen.add(stage.name)
        reads: set[bytes] = set()
        for stage in self.stages:
            reads |= stage.reads
        self.all_fields = bool(reads & ALL_FIELDS)
        self.reads = frozenset(name.lower() for name in reads - ALL_FIELDS)
        self.wants_response = any(type(s).overrides("on_response") for s in self.stages)
        self.wants_body = any(type(s).overrides("on_body") for s in self.stages)
        self.wants_done = any(type(s).overrides("on_done") and s.uses_done for s in self.stages)
        self.decides = any(type(s).overrides("decision") for s in self.stages)
        self.drops = frozenset(name.lower() for stage in self.stages for name in stage.drops)
        self.uses_tick = any(stage.uses_tick for stage in self.stages)
        """False: no stage reads its tick (the driver may pass NO_TICK)."""
        """Request fields the engine always removes (``Stage.drops``)."""
        """Some stage reports decisions another way than in ``Request.notes`` (the default)."""
        # for each count of stages entered, the ones with on_response, last first
        self._respond_at = tuple(
            tuple(s for s in reversed(self.stages[:n]) if type(s).overrides("on_response"))
            for n in range(len(self.stages) + 1)
        )

    def __len__(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        return f"<Pipeline {' -> '.join(s.name for s in self.stages) or '(empty)'}>"

    def run(self, request: Request) -> Run:
        return Run(self, request)


class Run:
    """One request's way through a :class:`Pipeline` (see the module docstring)."""

    __slots__ = (
        "pipeline",
        "request",
        "entered",
        "plan",
        "pending",
        "pending_stage",
        "final",
        "finished",
        "errors",
        "background",
        "answered",
    )

    def __init__(self, pipeline: Pipeline, request: Request) -> None:
        self.pipeline = pipeline
        self.request = request
        self.entered = 0
        """Stages whose ``on_request`` has been called (they get ``on_response`` and ``on_done``)."""
        self.plan: Forward | None = None
        self.pending: Fetch | Call | Join | Hold | None = None
        self.pending_stage: Stage | None = None
        self.final: Answer | Forward | None = None
        self.finished = False
        self.answered = False
        """The last stage entered answered locally: it does not see its own answer in on_response."""
        self.errors: list[StageError] = []
        """Stages that raised in ``on_done`` (the driver logs them)."""
        self.background: list[tuple[Stage, Fetch]] | None = None
        """The fire-and-forget Fetches of ``on_body`` and ``on_done`` whose results are still to
        come, and the stages that asked for them (for :meth:`landed`)."""

    # -- the request -------------------------------------------------------------------

    def start(self, tick: Tick) -> Effect:
        """Call the stages in order; the first pending or final effect comes back."""
        return self._go_on(tick)

    def resume(self, result: tuple[SubResult, ...] | CallResult | Flight | None, tick: Tick) -> Effect:
        """The pending effect's ``result`` is in (None for a Hold): its continuation decides,
        then the next stages."""
        pending, stage = self.pending, self.pending_stage
        if pending is None or stage is None:
            raise LocalProtocolError("nothing is pending in this run")
        self.pending = self.pending_stage = None
        then = pending.then
        if then is None:  # a Hold without a continuation: the next stage decides
            return self._go_on(tick)
        try:
            effect = then(result)  # type: ignore[arg-type]
        except Exception as exc:
            raise StageError(stage, f"its continuation raised {type(exc).__name__}: {exc}") from exc
        taken = self._take(stage, effect)
        return taken if taken is not None else self._go_on(tick)

    def _go_on(self, tick: Tick) -> Effect:
        stages = self.pipeline.stages
        request = self.request
        while self.entered < len(stages):
            stage = stages[self.entered]
            self.entered += 1
            try:
                effect = stage.on_request(request, tick)
            except Exception as exc:
                raise StageError(stage, f"on_request raised {type(exc).__name__}: {exc}") from exc
            taken = self._take(stage, effect)
            if taken is not None:
                return taken
        self.final = self.plan if self.plan is not None else PLAIN_FORWARD
        return self.final

    def _take(self, stage: Stage, effect: object) -> Effect | None:
        """A stage's effect: returned when the driver must act now, None to go on to the next."""
        if effect is None:
            return None
        if isinstance(effect, Forward):
            self.plan = effect if self.plan is None else self.plan.merge(effect)
            return None
        if isinstance(effect, Answer):
            self.final = effect
            self.answered = True
            return effect
        if isinstance(effect, _PENDING):
            if effect.then is None and not isinstance(effect, Hold):
                raise StageError(stage, "a Call from on_request needs a continuation (then)")
            self.pending, self.pending_stage = effect, stage
            return effect
        raise StageError(stage, f"answered {type(effect).__name__}, which is not an effect")

    # -- the response --------------------------------------------------------------------

    def responders(self) -> tuple[Stage, ...]:
        """The stages :meth:`respond` asks, last first: those that saw the request, but the one
        that answered it locally (it made that answer)."""
        return self.pipeline._respond_at[self.entered - 1 if self.answered else self.entered]

    def respond(self, response: Response, tick: Tick) -> tuple[Amend | None, Answer | None]:
        """The response passes back out through the stages that saw the request, last first
        (:meth:`responders`).

        Returns the fields to add and drop (``Forward.respond`` included) and, when a stage
        replaced the response, its :class:`Answer` (the stages outside it then see that one).
        """
        add: list[tuple[bytes, bytes]] = []
        drop: set[bytes] = set()
        plan = self.plan
        if plan is not None and plan.respond:  # whoever answers: an upstream, a stage, the engine
            add.extend(plan.respond)
        replaced: Answer | None = None
        current = response
        request = self.request
        for stage in self.responders():
            try:
                change = stage.on_response(request, current, tick)
            except Exception as exc:
                raise StageError(stage, f"on_response raised {type(exc).__name__}: {exc}") from exc
            if change is None:
                continue
            if isinstance(change, Amend):
                if change.drop:
                    drop |= change.drop
                    add = [(n, v) for n, v in add if n.lower() not in change.drop]
                add.extend(change.add)
            elif isinstance(change, Answer):
                replaced = change
                add, drop = [], set()
                current = Response(change.status, change.headers, None)
            else:
                raise StageError(stage, f"on_response answered {type(change).__name__}, not Amend or Answer")
        amend = Amend(tuple(add), frozenset(drop)) if add or drop else None
        return amend, replaced

    def body(self, response: Response, body: bytes, tick: Tick) -> list[Call | Fetch]:
        """A captured body is complete: each stage that saw the request gets it, last first.
        Raises :class:`StageError` naming a stage that raised or answered with something that
        is not a Call or a Fetch."""
        effects: list[Call | Fetch] = []
        for stage in reversed(self.pipeline.stages[: self.entered]):
            if type(stage).overrides("on_body"):
                try:
                    effect = stage.on_body(self.request, response, body, tick)
                except Exception as exc:
                    raise StageError(stage, f"on_body raised {type(exc).__name__}: {exc}") from exc
                error = self._keep(stage, effect, effects)
                if error is not None:
                    raise StageError(stage, f"on_body {error}")
        return effects

    def needs_done(self) -> bool:
        """Whether any stage that saw the request wants its :meth:`Stage.on_done` for it
        (:meth:`Stage.wants_done`): when none does, the driver may finish the run without an
        :class:`Outcome` (:meth:`skip_done`)."""
        request = self.request
        return any(
            type(stage).overrides("on_done") and stage.uses_done and stage.wants_done(request)
            for stage in self.pipeline.stages[: self.entered]
        )

    def skip_done(self) -> None:
        """Finish the run without telling the stages (none wants it: :meth:`needs_done`)."""
        self.finished = True

    def done(self, outcome: Outcome, tick: Tick) -> list[Call | Fetch]:
        """The request is over: every stage that saw it is told, last first, once only. A stage
        that raises (or answers with something that is not a Call or a Fetch) does not stop the
        others: its error is kept in :attr:`errors` for the driver to log."""
        if self.finished:
            return []
        self.finished = True
        effects: list[Call | Fetch] = []
        errors = self.errors
        for stage in reversed(self.pipeline.stages[: self.entered]):
            if type(stage).overrides("on_done") and stage.uses_done:
                try:
                    effect = stage.on_done(self.request, outcome, tick)
                except Exception as exc:
                    errors.append(StageError(stage, f"on_done raised {type(exc).__name__}: {exc}"))
                    continue
                error = self._keep(stage, effect, effects)
                if error is not None:
                    errors.append(StageError(stage, f"on_done {error}"))
        return effects

    def _keep(self, stage: Stage, effect: object, effects: list[Call | Fetch]) -> str | None:
        """Add a fire-and-forget ``effect`` to ``effects``; None, or what is wrong with it."""
        if effect is None:
            return None
        if isinstance(effect, Call):
            effects.append(effect)
            return None
        if isinstance(effect, Fetch):
            if self.background is None:
                self.background = []
            self.background.append((stage, effect))
            effects.append(effect)
            return None
        return f"answered {type(effect).__name__}, not a Call or a Fetch"

    def landed(self, fetch: Fetch, results: tuple[SubResult, ...]) -> Call | None:
        """A background ``fetch`` (from :meth:`body` or :meth:`done`) came back: its stage's
        ``then`` sees the results; a :class:`Call` it returns is for the driver to send, fire and
        forget (a cache writing what it fetched to its shared store), anything else is ignored. Raises
        :class:`StageError` naming the stage when ``then`` raises; a fetch this run did not hand
        out, or one already landed, is a :class:`~distpat.errors.LocalProtocolError`."""
        background = self.background or []
        found = next((i for i, (_, asked) in enumerate(background) if asked is fetch), None)
        if found is None:
            raise LocalProtocolError("this run handed out no such background fetch")
        stage, _ = background.pop(found)
        try:
            effect = fetch.then(results)
        except Exception as exc:
            message = f"its background fetch's then raised {type(exc).__name__}: {exc}"
            raise StageError(stage, message) from exc
        return effect if isinstance(effect, Call) and effect.then is None else None
