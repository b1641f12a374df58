"""A stage's :class:`~distpat.core.stage.Answer` as an aiohttp response, amendments applied to
a response's fields, and the driver's own error answers.

Framing follows the Answer's contract (RFC 9110): a 204 or 304 carries no body and no
Content-Length (RFC 9110 sections 8.6 and 15.4.5), a HEAD request gets no body but the GET's
Content-Length (section 9.3.2), and Content-Type is sent only with a body. aiohttp itself
omits the body of HEAD, 204 and 304 responses; the Content-Type rule is kept here.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from distpat.aiohttp.view import multidict, text
from distpat.core.stage import Amend, Answer

__all__ = ["EMPTY_STATUSES", "amend_headers", "answer_response", "failure_answer"]

EMPTY_STATUSES = frozenset({204, 304})
"""Final statuses whose responses have no body (RFC 9110 sections 15.3.5 and 15.4.5)."""

_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def answer_response(answer: Answer) -> web.Response:
    """An unprepared :class:`aiohttp.web.Response` for ``answer``."""
    response = web.Response(status=answer.status, headers=multidict(answer.headers))
    if answer.body and answer.status not in EMPTY_STATUSES:
        response.body = answer.body
        if "Content-Type" not in response.headers:
            response.headers["Content-Type"] = text(answer.content_type)
    return response


def amend_headers(headers: CIMultiDict[str], amend: Amend | None) -> None:
    """Drop, then add, the fields of ``amend`` in place. Framing fields are aiohttp's to
    write: an added Content-Length, Transfer-Encoding or Connection is left out."""
    if amend is None:
        return
    for name in amend.drop:
        headers.popall(text(name), None)
    for name, value in amend.add:
        key = text(name)
        if key.lower() not in _FRAMING:
            headers.add(key, text(value))


def failure_answer(status: int, reason: str) -> Answer:
    """The driver's own answer (502, 504, 500, 400): the status line's words and ``reason``
    as plain text, and ``reason`` kept for the log."""
    phrase = {400: "Bad Request", 500: "Internal Server Error", 502: "Bad Gateway", 504: "Gateway Timeout"}
    body = f"{status} {phrase.get(status, '')}: {reason}\n".encode("utf-8", "replace")
    return Answer(status, body, reason=reason)
