"""Shared test settings: hypothesis profiles for a 2-core CI machine, logging kept per test, a held port."""

import logging
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A command run in-process (``main([...])``) sets up the process's logging, as a process should:
    undo it after the test, so no other test sees its handlers, levels or the access log's settings."""
    names = ("", "distpat", "distpat.access", "distpat.proxy", "distpat.redis")
    saved = [
        (logger, list(logger.handlers), logger.level, logger.propagate)
        for logger in (logging.getLogger(name) for name in names)
    ]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def held_port() -> Iterator[int]:
    """A 127.0.0.1 port the test listens on: a command that tried to bind it would fail."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]
