"""Where a routing or limiting key comes from: ``ip``, ``uri``, ``path``, ``header:NAME``,
``cookie:NAME``, ``query:NAME``, and combinations of them joined with ``+``.

The values are nginx's variables, byte for byte, so a key means the same in distpat as in an
nginx configuration it replaces:

=================  =====================  ===================================================
source             nginx                  the key's bytes
=================  =====================  ===================================================
``ip``             ``$remote_addr``       the client's address as text
``uri``            ``$request_uri``       the request target exactly as the request line has it
``path``           (``$uri`` undecoded)   the target up to ``?``
``header:NAME``    ``$http_NAME``         the field's value (repeated fields joined with ``, ``)
``cookie:NAME``    ``$cookie_NAME``       the cookie's value, as sent (not decoded)
``query:NAME``     ``$arg_NAME``          the argument's value, still percent-encoded
=================  =====================  ===================================================

Cookie and argument names are matched without regard to case, as nginx does
(``ngx_http_parse_multi_header_lines``, ``ngx_http_arg``). A combination's key is its parts'
values joined with a NUL byte; it is missing (None) when any part is.
"""

from __future__ import annotations

from dataclasses import dataclass

from distpat.core.stage import Request
from distpat.errors import ConfigError

__all__ = ["KeySource", "cookie_value", "query_value"]

_KINDS = ("ip", "uri", "path", "header", "cookie", "query")
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def cookie_value(cookies: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a Cookie field's value (``a=1; b=2``), or None."""
    lower = name.lower()
    for part in cookies.split(b";"):
        key, eq, value = part.strip(b" \t").partition(b"=")
        if eq and key.lower() == lower:
            return value
    return None


def query_value(target: bytes, name: bytes) -> bytes | None:
    """The value of argument ``name`` in the query of ``target``, still encoded, or None."""
    query = target.partition(b"?")[2]
    if not query:
        return None
    lower = name.lower()
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key.lower() == lower:
            return value
    return None


@dataclass(frozen=True, slots=True)
class _Part:
    kind: str
    name: bytes = b""  # lowercase field name, or the cookie's / argument's name


@dataclass(frozen=True, slots=True)
class KeySource:
    """A parsed key source; :meth:`parse` takes the text of an option (``--key header:X-User``)."""

    text: str
    parts: tuple[_Part, ...]

    @classmethod
    def parse(cls, text: str, *, allowed: tuple[str, ...] = _KINDS) -> KeySource:
        """Raises :class:`ConfigError` naming what is wrong and what is allowed."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"a key source is needed: one of {', '.join(_shown(allowed))}")
        parts: list[_Part] = []
        for piece in text.split("+"):
            piece = piece.strip()
            kind, colon, name = piece.partition(":")
            kind = kind.lower()
            if kind not in allowed:
                raise ConfigError(f"key source {piece!r}: use one of {', '.join(_shown(allowed))}")
            if kind in ("ip", "uri", "path"):
                if colon:
                    raise ConfigError(f"key source {piece!r}: {kind} takes no name")
                parts.append(_Part(kind))
                continue
            raw = name.strip().encode("ascii", "replace")
            if not raw or any(c not in _TOKEN for c in raw):
                raise ConfigError(f"key source {piece!r}: {kind}: needs a name made of token characters")
            parts.append(_Part(kind, raw.lower() if kind == "header" else raw))
        return cls(text, tuple(parts))

    @property
    def reads(self) -> frozenset[bytes]:
        """The request fields this source needs (for ``Stage.reads``)."""
        names = set()
        for part in self.parts:
            if part.kind == "header":
                names.add(part.name)
            elif part.kind == "cookie":
                names.add(b"cookie")
        return frozenset(names)

    @property
    def is_cookie(self) -> bool:
        """A single cookie: a router may set it for a visitor that has none."""
        return len(self.parts) == 1 and self.parts[0].kind == "cookie"

    def extract(self, request: Request) -> bytes | None:
        """The key of ``request``, or None when it has none (no such field, cookie or argument)."""
        parts = self.parts
        if len(parts) == 1:
            part = parts[0]
            if part.kind == "header":  # the usual router key: one dict lookup
                value = request.fields.get(part.name)
                return value if value is not None or request.headers is None else request.field(part.name)
            return _value(part, request)
        values = []
        for part in self.parts:
            value = _value(part, request)
            if value is None:
                return None
            values.append(value)
        return b"\0".join(values)

    def __str__(self) -> str:
        return self.text


def _value(part: _Part, request: Request) -> bytes | None:
    kind = part.kind
    if kind == "uri":
        return request.target
    if kind == "header":
        return request.field(part.name)
    if kind == "ip":
        return request.client.encode("ascii", "replace")
    if kind == "cookie":
        cookies = request.field(b"cookie")
        return None if cookies is None else cookie_value(cookies, part.name)
    if kind == "query":
        return query_value(request.target, part.name)
    return request.path


def _shown(allowed: tuple[str, ...]) -> list[str]:
    return [k if k in ("ip", "uri", "path") else f"{k}:NAME" for k in allowed]
