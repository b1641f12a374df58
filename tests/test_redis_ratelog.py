"""net/ratelog.py: one line a second per reason, the next line counting those held back (a fake clock)."""

from __future__ import annotations

import logging

import pytest

from distpat.net import ratelog
from distpat.net.ratelog import RateLog


def make(caplog: pytest.LogCaptureFixture) -> tuple[RateLog, list[float]]:
    caplog.set_level(logging.INFO, logger="distpat.test")
    now = [0.0]
    return RateLog(logging.getLogger("distpat.test"), clock=lambda: now[0]), now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_one_line_a_second_per_reason_and_the_held_back_count(caplog: pytest.LogCaptureFixture) -> None:
    rl, now = make(caplog)
    written = [rl.log(logging.INFO, "a", "refused %s", i) for i in range(100)]
    assert written == [True] + [False] * 99
    assert rl.log(logging.WARNING, "b", "other %d%%", 5)  # another reason is not held back by "a"
    now[0] = 0.999
    assert not rl.log(logging.INFO, "a", "refused %s", "late")
    now[0] = 1.0
    assert rl.log(logging.INFO, "a", "refused %s", "again")
    now[0] = 5.0
    assert rl.log(logging.INFO, "a", "refused %s", "alone")
    assert lines(caplog) == [
        "refused 0",
        "other 5%",
        "refused again (and 100 more since the last line)",
        "refused alone",
    ]
    assert caplog.records[1].levelno == logging.WARNING


def test_the_reasons_remembered_are_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelog, "MAX_REASONS", 8)
    rl, _ = make(caplog)
    for i in range(100):
        assert rl.log(logging.INFO, f"r{i}", "line %d", i)
    assert "reasons=" in repr(rl)
    assert int(repr(rl).rsplit("reasons=", 1)[1].rstrip(")")) <= 8
    assert len(lines(caplog)) == 100
