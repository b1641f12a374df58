"""distpat.net.batch: writes kept for the end of the event-loop turn, in order, with bounded memory."""

from __future__ import annotations

import asyncio

from distpat.net.batch import HOLD_BYTES, WriteBatch, take_out


class Conn:
    """A Deferred connection writing into a list, one entry per transport write."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.out_listed = False
        self.sent: list[bytes] = []
        self.closed = False

    def send_out(self) -> None:
        data = take_out(self)
        if data is not None and not self.closed:
            self.sent.append(data)


def test_small_writes_wait_for_the_end_of_the_turn_and_go_as_one() -> None:
    async def run() -> tuple[list[bytes], list[bytes], list[bytes]]:
        batch, a, b = WriteBatch(), Conn(), Conn()
        batch.write(a, b"one ")
        batch.write(b, b"other")
        batch.write(a, b"two")
        before = list(a.sent)
        await asyncio.sleep(0)
        return before, a.sent, b.sent

    before, a_sent, b_sent = asyncio.run(run())
    assert before == []
    assert a_sent == [b"one two"]
    assert b_sent == [b"other"]


def test_a_large_write_goes_at_once_after_what_was_kept() -> None:
    async def run() -> list[bytes]:
        batch, a = WriteBatch(), Conn()
        batch.write(a, b"head")
        batch.write(a, b"x" * HOLD_BYTES)
        assert a.sent == [b"head" + b"x" * HOLD_BYTES]  # no call_soon needed: sent in order, now
        assert a.out == []
        assert a.out_bytes == 0
        batch.write(a, b"tail")
        await asyncio.sleep(0)
        return a.sent

    assert asyncio.run(run())[-1] == b"tail"


def test_bytes_kept_for_a_closed_connection_are_dropped() -> None:
    async def run() -> Conn:
        batch, a = WriteBatch(), Conn()
        batch.write(a, b"late")
        a.closed = True
        await asyncio.sleep(0)
        return a

    a = asyncio.run(run())
    assert a.sent == []
    assert a.out == []
    assert a.out_bytes == 0


def test_one_callback_per_turn_whatever_the_number_of_connections() -> None:
    async def run() -> int:
        loop = asyncio.get_running_loop()
        scheduled = 0
        real_call_soon = loop.call_soon

        def counting_call_soon(*args: object, **kwargs: object) -> asyncio.Handle:
            nonlocal scheduled
            if args[0] == batch.flush:
                scheduled += 1
            return real_call_soon(*args, **kwargs)  # type: ignore[arg-type]

        batch = WriteBatch()
        loop.call_soon = counting_call_soon  # type: ignore[method-assign]
        conns = [Conn() for _ in range(50)]
        for conn in conns:
            batch.write(conn, b"a")
            batch.write(conn, b"b")
        await asyncio.sleep(0)
        loop.call_soon = real_call_soon  # type: ignore[method-assign]
        assert all(conn.sent == [b"ab"] for conn in conns)
        return scheduled

    assert asyncio.run(run()) == 1
