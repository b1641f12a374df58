"""distpat.net.batch: writes kept for the end of the event-loop turn, in order, with bounded memory."""

from __future__ import annotations

import asyncio

from distpat.net.batch import HOLD_BYTES, WriteBatch


class Sink:
    """A transport recording each write; several share one log to show the order across them."""

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log
        self.closing = False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def is_closing(self) -> bool:
        return self.closing


def test_small_writes_wait_for_the_end_of_the_turn_and_keep_their_order() -> None:
    async def run() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        log: list[tuple[str, bytes]] = []
        batch, a, b = WriteBatch(), Sink("a", log), Sink("b", log)
        batch.write(a, b"one")  # type: ignore[arg-type]
        batch.write(b, b"other")  # type: ignore[arg-type]
        batch.write(a, b"two")  # type: ignore[arg-type]
        before = list(log)
        await asyncio.sleep(0)
        return before, log

    before, after = asyncio.run(run())
    assert before == []
    assert after == [("a", b"one"), ("b", b"other"), ("a", b"two")]


def test_a_large_write_goes_at_once_after_what_was_kept() -> None:
    async def run() -> list[tuple[str, bytes]]:
        log: list[tuple[str, bytes]] = []
        batch, a, b = WriteBatch(), Sink("a", log), Sink("b", log)
        batch.write(b, b"small")  # type: ignore[arg-type]
        batch.write(a, b"head")  # type: ignore[arg-type]
        batch.write(a, b"x" * HOLD_BYTES)  # type: ignore[arg-type]
        # sent now, without waiting for the turn to end, and after what came before it
        assert log == [("b", b"small"), ("a", b"head"), ("a", b"x" * HOLD_BYTES)]
        batch.write(a, b"tail")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        return log

    assert asyncio.run(run())[-1] == ("a", b"tail")


def test_writes_kept_for_a_transport_closed_meanwhile_are_dropped() -> None:
    async def run() -> list[tuple[str, bytes]]:
        log: list[tuple[str, bytes]] = []
        batch, a, b = WriteBatch(), Sink("a", log), Sink("b", log)
        batch.write(a, b"late")  # type: ignore[arg-type]
        batch.write(b, b"on time")  # type: ignore[arg-type]
        a.closing = True  # aborted: what was kept for it is not sent
        await asyncio.sleep(0)
        return log

    assert asyncio.run(run()) == [("b", b"on time")]


def test_one_callback_per_turn_whatever_the_number_of_writes() -> None:
    async def run() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        scheduled = 0
        real_call_soon = loop.call_soon
        batch = WriteBatch()

        def counting_call_soon(*args: object, **kwargs: object) -> asyncio.Handle:
            nonlocal scheduled
            if args[0] == batch.flush:
                scheduled += 1
            return real_call_soon(*args, **kwargs)  # type: ignore[arg-type]

        loop.call_soon = counting_call_soon  # type: ignore[method-assign]
        log: list[tuple[str, bytes]] = []
        sinks = [Sink(str(i), log) for i in range(50)]
        for sink in sinks:
            batch.write(sink, b"a")  # type: ignore[arg-type]
            batch.write(sink, b"b")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        loop.call_soon = real_call_soon  # type: ignore[method-assign]
        return scheduled, len(log)

    assert asyncio.run(run()) == (1, 100)


def test_a_write_that_raises_is_reported_and_the_others_still_go_out() -> None:
    async def run() -> tuple[list[tuple[str, bytes]], list[BaseException]]:
        reported: list[BaseException] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx["exception"]))
        log: list[tuple[str, bytes]] = []
        batch, a, b = WriteBatch(), Sink("a", log), Sink("b", log)

        def refuse(data: bytes) -> None:
            raise RuntimeError("cannot write after write_eof")

        a.write = refuse  # type: ignore[method-assign]
        batch.write(a, b"x")  # type: ignore[arg-type]
        batch.write(b, b"y")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        return log, reported

    log, reported = asyncio.run(run())
    assert log == [("b", b"y")]
    assert [str(e) for e in reported] == ["cannot write after write_eof"]
