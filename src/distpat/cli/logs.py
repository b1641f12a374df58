"""The application log of every ``distpat`` command: its level, its format, where it goes.

Text lines (``time logger LEVEL message``) or JSON lines (``{"time", "level",
"logger", "message"}``, and ``"exception"`` with the traceback when there is
one) on standard error, or appended to a file (redis-shard's ``-o``, which is
reopened when logrotate moves it). The access log is separate: with
``--access-log`` on, its lines go to standard error as they are, whatever
the level and format of the application log.

Calling :func:`configure_logging` again (a reload) replaces what the last
call installed.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_TEXT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_MARK = "_distpat_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339, UTC, milliseconds), level, logger, message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def _install(logger: logging.Logger, handler: logging.Handler) -> None:
    for old in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(old)
        old.close()
    setattr(handler, _MARK, True)
    logger.addHandler(handler)


def configure_logging(
    level: str = "info",
    log_format: str = "text",
    *,
    output: str | None = None,
) -> None:
    """The root logger at ``level`` in ``log_format``, to ``output`` (a file) or standard error.

    The ``distpat.access`` logger gets its own bare-line handler on standard error.
    """
    if output is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.WatchedFileHandler(output, encoding="utf-8")
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    _install(root, handler)
    root.setLevel(_LEVELS[level])

    # The engine writes access lines only while an access log format is set (a reload may turn it
    # on or off); they always go out bare, on standard error, at any application log level.
    access = logging.getLogger("distpat.access")
    lines = logging.StreamHandler(sys.stderr)
    lines.setFormatter(logging.Formatter("%(message)s"))
    _install(access, lines)
    access.propagate = False
    access.setLevel(logging.INFO)
