"""The proxy engine's one-pass forms of the rules in :mod:`distpat.core.http`.

Forwarding a request or a response means: check its framing, drop hop-by-hop
fields, add the proxy's own (X-Forwarded-*, Via), decide how the body is
re-framed and serialise the head. Done with the general functions of
:mod:`distpat.core.http` that is five passes over the fields and a list of
pairs built and joined twice, about two thirds of the engine's Python time
per request. The forwarders here do it in one pass straight into the head's
bytes, for the overwhelmingly common case; they return None for the rare one
they leave to the general functions (a Connection field naming fields other
than the standard hop-by-hop ones), and the tests check that the two always
agree.

A :class:`RequestForwarder` lives as long as a client connection and a
:class:`ResponseForwarder` as long as a server, so what is the same for every
request they forward (the client's address, the proxy's own fields) is
serialised once. The field names seen are kept, with what they mean, in a
table shared by the forwarders with the same dropped fields
(:mod:`distpat.core.field_names`), so that a name met before costs one
dictionary lookup and no lowercasing. The tables are bounded (names of at most
:data:`MEMO_NAME_BYTES` bytes, :data:`MEMO_NAMES` names), so a client sending
endless new names costs time, not memory.

Fields come from httptools, which refuses CR, LF and NUL in them, so the
heads are not scanned again for header injection (the general functions,
used when hooks change fields, are).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from distpat.core.amend import capture_known, keep_field
from distpat.core.field_names import (
    _CAPTURE,
    _CONNECTION,
    _COPY,
    _EXPECT,
    _FORWARDED,
    _FRAMING,
    _HOST,
    _LENGTH,
    _VIA,
    _XFF,
    MEMO_NAME_BYTES,
    MEMO_NAMES,
    _name_table,
)
from distpat.core.fields import HOP_BY_HOP, _forwarded_element
from distpat.core.framing import (
    _OWS,
    CHUNKED_BODY,
    LENGTH_BODY,
    NO_BODY,
    UNTIL_CLOSE_BODY,
    BodyKind,
    Headers,
    canonical_length,
    expects_continue,
    other_codings,
    request_framing,
    response_framing,
)
from distpat.core.host import BAD_HOST, NO_HOST, _valid_host_match
from distpat.core.serialize import _REASONS
from distpat.errors import RemoteProtocolError

__all__ = [
    "MEMO_NAMES",
    "MEMO_NAME_BYTES",
    "ForwardedRequest",
    "ForwardedResponse",
    "RequestForwarder",
    "ResponseForwarder",
    "forward_request",
    "forward_response",
    "other_codings",
]


# Connection options that name nothing beyond the fields already dropped.
_PLAIN_OPTIONS: Final = HOP_BY_HOP | {b"close", b"keep-alive", b""}
_COMMON_OPTIONS: Final = frozenset({b"keep-alive", b"close"})
# Connection values that are plain as received, so need no lowercasing or splitting.
_PLAIN_VALUES: Final = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close", b"keep-Alive"})
_STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()
}
_NO_FIELDS: Final[frozenset[bytes]] = frozenset()


def _append(joined: bytes | None, value: bytes) -> bytes | None:
    """A received list field joined to the ones before it; empty field lines add nothing."""
    value = value.strip(_OWS)
    if not value:
        return joined
    return value if joined is None else joined + b", " + value


def _options_are_plain(values: list[bytes]) -> bool:
    if len(values) == 1 and values[0].lower() in _COMMON_OPTIONS:
        return True
    for value in values:
        for token in value.lower().split(b","):
            if token.strip(_OWS) not in _PLAIN_OPTIONS:
                return False
    return True


def _framing_fields(fields: Headers | None, length: bytes | None) -> Headers:
    """The framing fields of a response once there is more than one Content-Length or Transfer-Encoding."""
    if fields is not None:
        return fields
    return [] if length is None else [(b"content-length", length)]


def _canonical_lengths(parts: list[bytes], at: list[int], values: list[bytes]) -> None:
    """The Content-Length lines ``parts[i]``, ``i`` in ``at``, as one canonical line if they agree."""
    canonical = canonical_length(values)
    if canonical is not None:
        parts[at[0]] = parts[at[0]].partition(b":")[0] + b": " + canonical + b"\r\n"
        for i in reversed(at[1:]):
            del parts[i]


def _lines(fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in fields)


ForwardedRequest = tuple[BodyKind, int, bytes, bool]
"""``(body kind, body length or -1, head bytes, expect 100-continue)``: a plain tuple, because building
even a frozen dataclass costs half a microsecond, a fair share of a proxied request's Python time."""

ForwardedResponse = tuple[BodyKind, bytes, bool, bool]
"""``(body kind, head bytes, rechunk, close)``: ``rechunk`` when the body is re-sent chunked (upstream
chunked or close-delimited, client HTTP/1.1); ``close`` when the client connection closes after it."""


class RequestForwarder:
    """Request heads from one client, as ``request_framing`` + ``forward_request_headers`` + ``request_head``.

    ``client_addr`` and ``scheme`` go into X-Forwarded-For/-Proto (and
    Forwarded when ``forwarded``), ``via`` into Via. Fields named in ``drop``
    (lowercase) are left out and ``extra`` fields added (a TLS sidecar's
    client identity). Fields whose names contain ``_`` are left out unless
    ``underscores``.
    """

    __slots__ = (
        "_names",
        "_seen",
        "_addr",
        "_proto",
        "_via",
        "_forwarded",
        "_plain",
        "_xfp",
        "_end",
        "_end_chunked",
        "_host_ok",
        "capture",
    )

    def __init__(
        self,
        *,
        client_addr: str,
        scheme: str,
        via: bytes,
        forwarded: bool = False,
        drop: frozenset[bytes] = _NO_FIELDS,
        extra: Sequence[tuple[bytes, bytes]] = (),
        underscores: bool = False,
        capture: frozenset[bytes] = _NO_FIELDS,
    ) -> None:
        self._names = _name_table(False, drop, underscores, capture)
        self.capture = capture
        """Lowercase names whose values :meth:`forward` hands back in ``fields`` (Stage.reads)."""
        self._host_ok = b""  # the last Host value found valid: a connection's requests repeat it
        self._seen = self._names.seen
        self._addr = client_addr.encode("ascii", "backslashreplace") or b"unknown"
        self._proto = scheme.encode("ascii", "backslashreplace")
        self._via = via
        self._forwarded = forwarded
        self._xfp = b"X-Forwarded-Proto: " + self._proto + b"\r\n"
        # Via, X-Forwarded-For and -Proto of a request that came without Via and X-Forwarded-For
        self._plain = b"Via: " + via + b"\r\nX-Forwarded-For: " + self._addr + b"\r\n" + self._xfp
        extra_lines = _lines(extra)
        self._end = extra_lines + b"\r\n"
        self._end_chunked = extra_lines + b"Transfer-Encoding: chunked\r\n\r\n"

    def forward(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        http10: bool,
        fields: dict[bytes, bytes] | None = None,
    ) -> ForwardedRequest | None:
        """The upstream request head, or None when a Connection field names other fields
        or the target is not in origin form (absolute-form, ``*``).

        With ``fields``, the values of the ``capture`` names are put there by lowercase name, in
        the same pass (see :func:`capture_fields` for how repeated fields are joined).

        ``Expect: 100-continue`` is taken out (the engine answers it); any
        other expectation is refused with 417. Content-Length is sent in
        canonical decimal, as one field.

        Raises:
            RemoteProtocolError: bad framing (400), no Host field in HTTP/1.1, two Host fields or an
                invalid Host value (400), an unknown expectation (417).
        """
        if target[0] != 0x2F:  # not "/..." (llhttp never delivers an empty target)
            return None
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        length_at = -1  # where the Content-Length value sits in parts
        seen = self._seen
        body_fields: Headers | None = None
        connection: list[bytes] | None = None
        host: bytes | None = None
        xff: bytes | None = None
        vias: bytes | None = None
        fwd: bytes | None = None
        expect = False
        for name, value in headers:
            kind = seen.get(name)  # inline, as in ResponseForwarder: a call per field costs more
            if kind is None:
                kind = self._names.kind(name)
            if kind == _COPY:
                parts += (name, b": ", value, b"\r\n")
            elif kind == _CAPTURE:
                parts += (name, b": ", value, b"\r\n")
                if fields is not None:
                    keep_field(fields, name.lower(), value)
            elif kind == _HOST:
                if host is not None:
                    raise RemoteProtocolError("request has more than one Host field", status=400)
                host = value.strip(_OWS)
                if host != self._host_ok:
                    if host and _valid_host_match(host) is None:
                        raise RemoteProtocolError(f"{BAD_HOST}: {host!r}", status=400)
                    self._host_ok = host
                parts += (name, b": ", value, b"\r\n")
            elif kind == _FRAMING:
                if body_fields is None:
                    body_fields = []
                body_fields.append((name, value))
                if length_at < 0 and name.lower() == b"content-length":
                    length_at = len(parts) + 2
                    parts += (name, b": ", value, b"\r\n")
            elif kind == _CONNECTION:
                if value not in _PLAIN_VALUES:
                    if connection is None:
                        connection = []
                    connection.append(value)
            elif kind == _XFF:
                xff = _append(xff, value)
            elif kind == _VIA:
                vias = _append(vias, value)
            elif kind == _FORWARDED:
                if self._forwarded:
                    fwd = _append(fwd, value)
                else:
                    parts += (name, b": ", value, b"\r\n")
            elif kind == _EXPECT:
                expect = expects_continue(value)
            # _HOP and _XF_SET fields are dropped
        if host is None and not http10:
            raise RemoteProtocolError(NO_HOST, status=400)
        if connection is not None and not _options_are_plain(connection):
            return None
        if fields is not None and self.capture:
            capture_known(fields, self.capture, host, xff, vias)
        if body_fields:
            framing = request_framing(body_fields, version=(1, 0) if http10 else (1, 1))
            body, length = framing.kind, -1 if framing.length is None else framing.length
            if length_at >= 0:
                value = parts[length_at]
                if (value[0] == 0x30 and len(value) > 1) or len(body_fields) > 1 or not value.isdigit():
                    parts[length_at] = b"%d" % length  # 007, " 7", 7, 7: the value as one number
        else:
            body, length = NO_BODY, -1
        if vias is None and xff is None:
            parts.append(self._plain)
        else:
            via, addr = self._via, self._addr
            parts += (b"Via: ", via if vias is None else vias + b", " + via, b"\r\n")
            parts += (b"X-Forwarded-For: ", addr if xff is None else xff + b", " + addr, b"\r\n")
            parts.append(self._xfp)
        if host:
            parts += (b"X-Forwarded-Host: ", host, b"\r\n")
        if self._forwarded:
            element = _forwarded_element(self._addr, self._proto, host)
            parts += (b"Forwarded: ", element if fwd is None else fwd + b", " + element, b"\r\n")
        parts.append(self._end_chunked if body is CHUNKED_BODY else self._end)
        return body, length, b"".join(parts), expect


class ResponseForwarder:
    """Response heads for clients, as ``response_framing`` + ``forward_response_headers`` + ``response_head``.

    Chunked and close-delimited bodies are re-sent chunked to an HTTP/1.1
    client (Content-Length dropped, other transfer codings still declared)
    and close-delimited to an HTTP/1.0 one. Fields named in ``drop``
    (lowercase) are left out and ``extra`` fields added (a sidecar's
    Strict-Transport-Security).
    """

    __slots__ = ("_names", "_seen", "_via", "_extra", "_keep", "_close", "_keep10")

    def __init__(
        self, *, via: bytes, drop: frozenset[bytes] = _NO_FIELDS, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self._names = _name_table(True, drop)
        self._seen = self._names.seen
        self._via = via
        self._extra = _lines(extra)
        # the end of a head whose body keeps its framing and that came without Via
        tail = b"Via: " + via + b"\r\n" + self._extra
        self._keep = tail + b"\r\n"
        self._close = tail + b"Connection: close\r\n\r\n"
        self._keep10 = tail + b"Connection: keep-alive\r\n\r\n"

    def forward(
        self, method: bytes, status: int, headers: Headers, http10: bool, keep_alive: bool
    ) -> ForwardedResponse | None:
        """The client response head, or None when a Connection field names other fields.

        ``keep_alive`` False (the client asked to close, or the server is
        draining) adds ``Connection: close``; an HTTP/1.0 client that keeps
        the connection gets ``Connection: keep-alive``.

        Raises:
            RemoteProtocolError: status 502 for framing that cannot be trusted.
        """
        line = _STATUS_LINES.get(status)
        parts = [line if line is not None else b"HTTP/1.1 %d \r\n" % status]
        seen = self._seen
        length: bytes | None = None  # the one Content-Length value, when there is exactly one
        body_fields: Headers | None = None  # every Content-Length and Transfer-Encoding, past the first
        connection: list[bytes] | None = None
        vias: bytes | None = None
        lengths: list[int] = []  # where Content-Length lines sit in parts, in case the body is re-framed
        for name, value in headers:
            kind = seen.get(name)
            if kind is None:
                kind = self._names.kind(name)
            if kind == _COPY:
                parts += (name, b": ", value, b"\r\n")
            elif kind == _LENGTH:
                if body_fields is None and length is None:
                    length = value
                else:
                    body_fields = _framing_fields(body_fields, length)
                    length = None
                    body_fields.append((name, value))
                lengths.append(len(parts))
                parts.append(name + b": " + value + b"\r\n")
            elif kind == _FRAMING:
                body_fields = _framing_fields(body_fields, length)
                length = None
                body_fields.append((name, value))
            elif kind == _CONNECTION:
                if value not in _PLAIN_VALUES:
                    if connection is None:
                        connection = []
                    connection.append(value)
            elif kind == _VIA:
                vias = _append(vias, value)
        if connection is not None and not _options_are_plain(connection):
            return None
        if (
            length is not None
            and status >= 200
            and status != 204
            and status != 304
            and method != b"HEAD"
            and method != b"CONNECT"
            and length.isdigit()
            and len(length) <= 18
        ):  # the usual case, one plain Content-Length: the same answer response_framing gives
            body = LENGTH_BODY
            if length[0] == 0x30 and len(length) > 1:  # leading zeros: written as the number
                _canonical_lengths(parts, lengths, [length])
        else:
            if length is not None:
                body_fields = [(b"content-length", length)]
            body = response_framing(method, status, body_fields or ()).kind
            if lengths and body is not CHUNKED_BODY and body is not UNTIL_CLOSE_BODY:
                values = [v for n, v in body_fields or () if n.lower() == b"content-length"]
                _canonical_lengths(parts, lengths, values)
        close = not keep_alive
        if vias is None and body is not CHUNKED_BODY and body is not UNTIL_CLOSE_BODY:
            parts.append(self._close if close else self._keep10 if http10 else self._keep)
            return body, b"".join(parts), False, close
        parts += (b"Via: ", self._via if vias is None else vias + b", " + self._via, b"\r\n", self._extra)
        rechunk = False
        if body is CHUNKED_BODY or body is UNTIL_CLOSE_BODY:
            for i in reversed(lengths):  # the body is re-framed: no Content-Length describes it
                del parts[i]
            codings = other_codings(body_fields or [])
            if http10:
                close = True
                if codings:
                    parts += (b"Content-Encoding: ", codings, b"\r\n")  # HTTP/1.0 has no transfer codings
            else:
                rechunk = True
                parts += (b"Transfer-Encoding: ", codings + b", chunked" if codings else b"chunked", b"\r\n")
        if close:
            parts.append(b"Connection: close\r\n")
        elif http10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return body, b"".join(parts), rechunk, close


def forward_request(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    http10: bool,
    client_addr: str,
    scheme: str,
    via: bytes,
    forwarded: bool = False,
    drop: frozenset[bytes] = _NO_FIELDS,
    extra: Sequence[tuple[bytes, bytes]] = (),
    underscores: bool = False,
) -> ForwardedRequest | None:
    """One request through a new :class:`RequestForwarder` (see :meth:`RequestForwarder.forward`)."""
    forwarder = RequestForwarder(
        client_addr=client_addr,
        scheme=scheme,
        via=via,
        forwarded=forwarded,
        drop=drop,
        extra=extra,
        underscores=underscores,
    )
    return forwarder.forward(method, target, headers, http10)


def forward_response(
    method: bytes,
    status: int,
    headers: Headers,
    *,
    via: bytes,
    http10: bool,
    keep_alive: bool,
    drop: frozenset[bytes] = _NO_FIELDS,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> ForwardedResponse | None:
    """One response through a new :class:`ResponseForwarder` (see :meth:`ResponseForwarder.forward`)."""
    return ResponseForwarder(via=via, drop=drop, extra=extra).forward(
        method, status, headers, http10, keep_alive
    )
