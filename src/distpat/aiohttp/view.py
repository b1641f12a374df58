"""An aiohttp request as stages see it, the tick they get, and fields back to aiohttp's text.

aiohttp decodes field values and the request target as UTF-8 with ``surrogateescape``; the
stages get the bytes back (``request.raw_headers`` are bytes already). Going the other way,
aiohttp writes header text as UTF-8, so a value that is not UTF-8 cannot be sent byte for
byte: :func:`text` keeps what aiohttp keeps.
"""

from __future__ import annotations

import random
import time

from aiohttp import web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict

from distpat.core.pipeline import Pipeline
from distpat.core.stage import Fields, Pools, Request, Tick

__all__ = ["fields_of", "multidict", "now", "request_view", "target_of", "text"]

_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def now() -> Tick:
    """This moment for a stage: monotonic and wall time, 64 fresh random bits."""
    return Tick(time.monotonic(), time.time(), random.getrandbits(64))


def target_of(request: web.BaseRequest) -> bytes:
    """The request target as the request line had it (nginx's ``$request_uri``)."""
    return request.raw_path.encode("utf-8", "surrogateescape")


def request_view(request: web.BaseRequest, pipeline: Pipeline, pools: Pools | None) -> Request:
    """The :class:`~distpat.core.stage.Request` of ``request``: the fields the pipeline reads
    (repeated ones joined with ``", "``, Cookie with ``"; "``), every field when a stage
    declared :data:`~distpat.core.stage.ALL_FIELDS`."""
    reads = pipeline.reads
    fields: dict[bytes, bytes] = {}
    if reads:
        found: dict[bytes, list[bytes]] = {}
        for name, value in request.raw_headers:
            lname = name.lower()
            if lname in reads:
                found.setdefault(lname, []).append(value)
        for lname, values in found.items():
            fields[lname] = (
                values[0] if len(values) == 1 else (b"; " if lname == b"cookie" else b", ").join(values)
            )
    return Request(
        request.method.encode("ascii"),
        target_of(request),
        client=request.remote or "",
        scheme=request.scheme,
        http10=request.version < HttpVersion11,
        fields=fields,
        headers=list(request.raw_headers) if pipeline.all_fields else None,
        pools=pools,
    )


def text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def multidict(fields: Fields, *, framing: bool = True) -> CIMultiDict[str]:
    """``fields`` as aiohttp headers; without ``framing``, Content-Length, Transfer-Encoding
    and Connection are left out (aiohttp frames the message itself)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in fields:
        key = text(name)
        if framing or key.lower() not in _FRAMING:
            headers.add(key, text(value))
    return headers


def fields_of(headers: CIMultiDict[str] | web.StreamResponse) -> Fields:
    """aiohttp headers (or a response's) as bytes fields, in order."""
    items = headers.headers.items() if isinstance(headers, web.StreamResponse) else headers.items()
    return tuple(
        (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for k, v in items
    )
