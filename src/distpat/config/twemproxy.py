"""Read twemproxy (nutcracker) YAML configuration files.

:func:`parse_twemproxy` turns the text of a ``nutcracker.yml`` into one
:class:`TwemproxyPool` per pool, in file order, and accepts and rejects what
twemproxy 0.5.0 accepts and rejects (``src/nc_conf.c``), with these
deliberate differences:

* Host names are not resolved (this module does no I/O), so a ``listen:``
  host that does not resolve is accepted here and refused by nutcracker.
  An empty ``listen:`` host, which can never resolve, is rejected.
* twemproxy reads numbers into a C ``int`` and silently wraps: a weight of
  4294967297 is taken as 1, and 4294967296 as 0. Numbers above 2**31 - 1
  are rejected here instead.

The rules that are mirrored exactly, besides the obvious ones:

* Only block-style YAML: flow collections (``[...]``, ``{...}``), anchors,
  aliases, tags, directives and ``---``/``...`` markers are refused.
* Every value is taken as the literal text of its scalar: ``redis: "true"``
  is true, while ``redis: True``, ``yes`` or ``on`` are errors, and
  ``timeout: 0x10`` or ``1_000`` are not numbers. An empty scalar anywhere
  is an error.
* A key may be given as a one-line block list (``hash:`` then ``- md5``),
  because nutcracker applies each list item to the key; each pool must have
  exactly one key with a list value, which is normally ``servers``.
* A server line is split from the right: ``[name]`` after the last space,
  weight after the last ``:``, then port after the next ``:``. The rest is
  the host, so ``localhost:6379:1:2`` is host ``localhost:6379``, port 1.
  A line starting with ``/`` is a unix socket ``path:weight [name]``.
* Servers are duplicates when their *names* (see
  :attr:`TwemproxyServer.ring_name`) are equal; the same address twice under
  two names, or written ``6379`` and ``06379``, is allowed.
* ``client_connections`` is validated but nutcracker 0.5.0 then ignores it
  (``conf_validate_pool`` resets it to 0, unlimited); it is kept here as
  written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import yaml

from distpat.core.twemhash import TWEMPROXY_HASHES, HashFunction
from distpat.errors import ConfigError

__all__ = [
    "TWEMPROXY_DISTRIBUTIONS",
    "TWEMPROXY_KETAMA_PORT",
    "TWEMPROXY_POOL_KEYS",
    "TwemproxyListen",
    "TwemproxyPool",
    "TwemproxyServer",
    "load_twemproxy",
    "parse_twemproxy",
]

TWEMPROXY_DISTRIBUTIONS: Final = ("ketama", "modula", "random")
"""Names twemproxy accepts for ``distribution:``."""

TWEMPROXY_KETAMA_PORT: Final = 11211
"""A server on this port is named by its host alone (libmemcached compatible)."""

_INT_MAX: Final = 2**31 - 1

_T = TypeVar("_T")
_D = TypeVar("_D")


class _Reject(Exception):
    """A value is invalid; the caller adds file, pool and key to the message."""


def _atoi(text: str) -> int:
    """Parse a number the way twemproxy's ``nc_atoi`` does, minus the wrap."""
    if not text or not all("0" <= ch <= "9" for ch in text):
        raise _Reject(f"{text!r} is not a non-negative integer")
    value = int(text)
    if value > _INT_MAX:
        wrapped = value & 0xFFFFFFFF
        if wrapped > _INT_MAX:
            wrapped = -1
        raise _Reject(f"{text} is out of range (at most {_INT_MAX}; nutcracker would wrap it to {wrapped})")
    return value


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class TwemproxyServer:
    """One line of a pool's ``servers:`` list.

    Attributes:
        address: ``host:port`` as written, or the unix socket path.
        host: the host as written (the path, for a unix socket).
        port: the TCP port, or ``None`` for a unix socket.
        weight: the weight, at least 1.
        name: the optional ``[name]`` after the last space, or ``None``.
        ring_name: the string twemproxy hashes for this server (ketama points)
            and names it by in its stats, and whose order decides modula's
            server order (see :attr:`TwemproxyPool.dispatch_order`). It is
            ``name`` when one is given (even an empty one); otherwise
            ``host:port`` exactly as written (``06379`` stays ``06379``),
            except that a server on port 11211 is named ``host`` alone, and a
            unix socket is named ``path:`` -- with the trailing colon, because
            ``conf_add_server`` copies one byte past the path.
        label: ``name`` if given and non-empty, else ``address``; for humans.
    """

    address: str
    host: str
    port: int | None
    weight: int
    name: str | None
    ring_name: str
    label: str

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ConfigError(f"server {self.address!r}: weight must be at least 1")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ConfigError(f"server {self.address!r}: port {self.port} is invalid")

    @property
    def is_unix(self) -> bool:
        """Whether this server is reached through a unix domain socket."""
        return self.port is None

    @classmethod
    def parse(cls, entry: str) -> TwemproxyServer:
        """Parse ``host:port:weight [name]`` or ``/path:weight [name]``.

        Raises:
            ConfigError: the entry is malformed; the message quotes it.
        """
        try:
            return _parse_server(entry)
        except _Reject as exc:
            raise ConfigError(str(exc)) from None


def _parse_server(entry: str) -> TwemproxyServer:
    quoted = f"entry {entry!r}"
    form = f"{quoted} is not of the form 'host:port:weight [name]' or '/path/to/socket:weight [name]'"
    # Split from the right, as conf_add_server does: [name], weight, port.
    rest = entry
    name: str | None = None
    cut = rest.rfind(" ")
    if cut >= 0:
        name, rest = rest[cut + 1 :], rest[:cut]
    cut = rest.rfind(":")
    if cut < 0:
        raise _Reject(form)
    weight_text, rest = rest[cut + 1 :], rest[:cut]
    unix = entry.startswith("/")
    cut = rest.rfind(":")
    if unix:
        if cut >= 0:
            raise _Reject(form)
        host, port_text = rest, ""
    else:
        if cut < 0:
            raise _Reject(form)
        host, port_text = rest[:cut], rest[cut + 1 :]
    try:
        weight = _atoi(weight_text)
    except _Reject as exc:
        raise _Reject(f"{quoted} has an invalid weight: {exc}") from None
    if weight == 0:
        raise _Reject(f"{quoted} has a zero weight")
    port: int | None = None
    if not unix:
        try:
            port = _atoi(port_text)
        except _Reject as exc:
            raise _Reject(f"{quoted} has an invalid port: {exc}") from None
        if not 1 <= port <= 65535:
            raise _Reject(f"{quoted} has an invalid port: {port} is not in 1..65535")
    address = host if unix else f"{host}:{port_text}"
    if name is not None:
        ring_name = name
    elif port == TWEMPROXY_KETAMA_PORT:
        ring_name = host
    else:
        ring_name = f"{address}:" if unix else address
    return TwemproxyServer(
        address=address,
        host=host,
        port=port,
        weight=weight,
        name=name,
        ring_name=ring_name,
        label=name or address,
    )


@dataclass(frozen=True, slots=True)
class TwemproxyListen:
    """A pool's ``listen:`` address.

    Attributes:
        address: the value as written (``host:port`` or ``/path [perm]``).
        host: the host, or the unix socket path.
        port: the TCP port, or ``None`` for a unix socket.
        perm: the unix socket's permission bits when given, else ``None``.
    """

    address: str
    host: str
    port: int | None
    perm: int | None = None

    @property
    def is_unix(self) -> bool:
        """Whether the pool listens on a unix domain socket."""
        return self.port is None


def _strtol_octal(text: str) -> int:
    """C ``strtol(text, NULL, 8)``: leading space, a sign, then octal digits."""
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    value = 0
    while i < n and "0" <= text[i] <= "7":
        value = value * 8 + ord(text[i]) - 48
        i += 1
    return sign * value


def _parse_listen(text: str) -> TwemproxyListen:
    if text.startswith("/"):
        cut = text.rfind(" ")
        if cut < 0:
            return TwemproxyListen(address=text, host=text, port=None)
        perm = _strtol_octal(text[cut + 1 :])
        if not 0 <= perm <= 0o777:
            raise _Reject(
                f"{text!r} has an invalid file permission in "
                "'/path/to/socket permission' (an octal mode up to 0777)"
            )
        return TwemproxyListen(address=text, host=text[:cut], port=None, perm=perm)
    cut = text.rfind(":")
    if cut < 0:
        raise _Reject(f"{text!r} is not of the form 'host:port' or '/path/to/socket'")
    host = text[:cut]
    try:
        port = _atoi(text[cut + 1 :])
    except _Reject as exc:
        raise _Reject(f"{text!r} has an invalid port: {exc}") from None
    if not 1 <= port <= 65535:
        raise _Reject(f"{text!r} has an invalid port: {port} is not in 1..65535")
    if not host:
        raise _Reject(f"{text!r} has an empty host, which cannot be resolved")
    return TwemproxyListen(address=text, host=host, port=port)


def _ring_order(server: TwemproxyServer) -> tuple[int, bytes]:
    name = server.ring_name.encode("utf-8", "surrogatepass")
    return len(name), name


@dataclass(frozen=True, slots=True)
class TwemproxyPool:
    """One pool of a twemproxy configuration, with twemproxy's defaults.

    Field names are the YAML keys. Times are in milliseconds as in the file;
    ``timeout`` is ``None`` when absent (twemproxy's -1: wait forever).
    ``servers`` is in file order; see :attr:`dispatch_order` for the order
    twemproxy actually uses.
    """

    name: str
    listen: TwemproxyListen
    servers: tuple[TwemproxyServer, ...]
    hash: str = "fnv1a_64"
    hash_tag: bytes = b""
    distribution: str = "ketama"
    timeout: int | None = None
    backlog: int = 512
    client_connections: int = 0
    redis: bool = False
    tcpkeepalive: bool = False
    redis_auth: str | None = None
    redis_db: int = 0
    preconnect: bool = False
    auto_eject_hosts: bool = False
    server_connections: int = 1
    server_retry_timeout: int = 30_000
    server_failure_limit: int = 2

    @property
    def key_hash(self) -> HashFunction:
        """The hash function named by ``hash``."""
        return TWEMPROXY_HASHES[self.hash]

    @property
    def dispatch_order(self) -> tuple[TwemproxyServer, ...]:
        """The servers in the order twemproxy indexes them.

        ``conf_validate_server`` sorts a pool's servers in place to find
        duplicate names, and that sorted array is what modula indexes
        (``hash % total_weight``, each server taking ``weight`` consecutive
        slots) and what the stats list. The order is by the UTF-8 length of
        :attr:`TwemproxyServer.ring_name`, then by its bytes.
        """
        return tuple(sorted(self.servers, key=_ring_order))

    @property
    def total_weight(self) -> int:
        """The sum of the servers' weights."""
        return sum(s.weight for s in self.servers)


# --------------------------------------------------------------------------
# Key handlers: each turns the raw scalar text of one key into a field value.


def _bool(text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise _Reject(f"{text!r} is not 'true' or 'false'")


def _hash(text: str) -> str:
    if text not in TWEMPROXY_HASHES:
        raise _Reject(f"unknown hash {text!r}; valid hashes: {', '.join(TWEMPROXY_HASHES)}")
    return text


def _distribution(text: str) -> str:
    if text not in TWEMPROXY_DISTRIBUTIONS:
        raise _Reject(
            f"unknown distribution {text!r}; valid distributions: {', '.join(TWEMPROXY_DISTRIBUTIONS)}"
        )
    return text


def _hash_tag(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) != 2:
        raise _Reject(f"{text!r} is not a two-byte hash tag such as '{{}}'")
    return raw


_HANDLERS: Final[Mapping[str, Callable[[str], object]]] = {
    "listen": _parse_listen,
    "hash": _hash,
    "hash_tag": _hash_tag,
    "distribution": _distribution,
    "timeout": _atoi,
    "backlog": _atoi,
    "client_connections": _atoi,
    "redis": _bool,
    "tcpkeepalive": _bool,
    "redis_auth": str,
    "redis_db": _atoi,
    "preconnect": _bool,
    "auto_eject_hosts": _bool,
    "server_connections": _atoi,
    "server_retry_timeout": _atoi,
    "server_failure_limit": _atoi,
    "servers": _parse_server,
}

TWEMPROXY_POOL_KEYS: Final = tuple(_HANDLERS)
"""Every key twemproxy 0.5.0 accepts in a pool, in its ``conf_commands`` order."""

# YAML tokens nutcracker's conf_validate_tokens refuses, and how to name them.
_DISALLOWED_TOKENS: Final[tuple[tuple[type[yaml.Token], str], ...]] = (
    (yaml.DirectiveToken, "a %YAML or %TAG directive"),
    (yaml.DocumentStartToken, "a document start marker '---'"),
    (yaml.DocumentEndToken, "a document end marker '...'"),
    (yaml.FlowSequenceStartToken, "a flow sequence '['"),
    (yaml.FlowSequenceEndToken, "a flow sequence ']'"),
    (yaml.FlowMappingStartToken, "a flow mapping '{'"),
    (yaml.FlowMappingEndToken, "a flow mapping '}'"),
    (yaml.FlowEntryToken, "a flow entry ','"),
    (yaml.AliasToken, "an alias '*'"),
    (yaml.AnchorToken, "an anchor '&'"),
    (yaml.TagToken, "a tag '!'"),
)


# --------------------------------------------------------------------------
# Loading


class _Context:
    """Builds error messages that name the file, the pool and the key."""

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def error(
        self,
        detail: str,
        *,
        pool: str | None = None,
        key: str | None = None,
        node: yaml.Node | None = None,
    ) -> ConfigError:
        parts = [self.source]
        if pool is not None:
            parts.append(f"pool {pool!r}")
        if key is not None:
            parts.append(f"key {key!r}")
        where = ": ".join(parts)
        line = f" (line {node.start_mark.line + 1})" if node is not None else ""
        return ConfigError(f"{where}: {detail}{line}")


def _yaml_error(ctx: _Context, exc: yaml.YAMLError) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return ConfigError(
            f"{ctx.source}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
        )
    return ConfigError(f"{ctx.source}: invalid YAML: {exc}")


def _check_tokens(ctx: _Context, text: str) -> None:
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            for kind, what in _DISALLOWED_TOKENS:
                if isinstance(token, kind):
                    raise ConfigError(
                        f"{ctx.source}: {what} at line {token.start_mark.line + 1} "
                        "is not allowed; nutcracker reads block-style YAML only"
                    )
    except yaml.YAMLError as exc:
        raise _yaml_error(ctx, exc) from None


def _scalar_text(ctx: _Context, node: yaml.Node, what: str, *, pool: str | None, key: str | None) -> str:
    if not isinstance(node, yaml.ScalarNode):
        kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
        raise ctx.error(
            f"{what} must be a plain string, not a {kind}",
            pool=pool,
            key=key,
            node=node,
        )
    text = node.value
    if not isinstance(text, str) or text == "":
        raise ctx.error(f"{what} is empty", pool=pool, key=key, node=node)
    return text


def _parse_pool(ctx: _Context, name: str, node: yaml.Node) -> TwemproxyPool:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error("expected a mapping of keys (listen, servers, ...)", pool=name, node=node)
    values: dict[str, object] = {}
    servers: list[TwemproxyServer] = []
    entries: list[str] = []
    list_keys: list[str] = []
    for key_node, value_node in node.value:
        key = _scalar_text(ctx, key_node, "a key", pool=name, key=None)
        handler = _HANDLERS.get(key)
        if handler is None:
            raise ctx.error(
                f"unknown key; valid keys: {', '.join(TWEMPROXY_POOL_KEYS)}",
                pool=name,
                key=key,
                node=key_node,
            )
        if isinstance(value_node, yaml.SequenceNode):
            list_keys.append(key)
            if len(list_keys) > 1:
                raise ctx.error(
                    f"only one key of a pool may have a list value, and {list_keys[0]!r} already has one",
                    pool=name,
                    key=key,
                    node=value_node,
                )
            items = value_node.value
        elif isinstance(value_node, yaml.MappingNode):
            raise ctx.error(
                "a mapping is nested too deeply here; expected a value or a list",
                pool=name,
                key=key,
                node=value_node,
            )
        else:
            items = [value_node]
        for item in items:
            text = _scalar_text(ctx, item, "a value", pool=name, key=key)
            if key != "servers" and key in values:
                raise ctx.error("is given more than once", pool=name, key=key, node=item)
            try:
                value = handler(text)
            except _Reject as exc:
                raise ctx.error(str(exc), pool=name, key=key, node=item) from None
            if isinstance(value, TwemproxyServer):
                servers.append(value)
                entries.append(text)
            else:
                values[key] = value
    if not list_keys:
        raise ctx.error(
            "expected a list of servers ('- host:port:weight [name]' lines)",
            pool=name,
            key="servers",
            node=node,
        )
    return _validate_pool(ctx, name, node, values, servers, entries)


def _validate_pool(
    ctx: _Context,
    name: str,
    node: yaml.Node,
    values: dict[str, object],
    servers: list[TwemproxyServer],
    entries: list[str],
) -> TwemproxyPool:
    listen = values.pop("listen", None)
    if not isinstance(listen, TwemproxyListen):
        raise ctx.error("is missing", pool=name, key="listen", node=node)
    if values.get("server_connections") == 0:
        raise ctx.error("cannot be 0", pool=name, key="server_connections")
    if "redis_auth" in values and values.get("redis") is not True:
        raise ctx.error("is only valid for a redis pool (redis: true)", pool=name, key="redis_auth")
    if not servers:
        raise ctx.error("has no servers", pool=name, node=node)
    seen: dict[str, str] = {}
    for server, entry in zip(servers, entries, strict=True):
        earlier = seen.setdefault(server.ring_name, entry)
        if earlier is not entry:
            raise ctx.error(
                f"entries {earlier!r} and {entry!r} have the same name {server.ring_name!r}",
                pool=name,
                key="servers",
            )
    return TwemproxyPool(
        name=name,
        listen=listen,
        servers=tuple(servers),
        hash=_get(values, "hash", str, "fnv1a_64"),
        hash_tag=_get(values, "hash_tag", bytes, b""),
        distribution=_get(values, "distribution", str, "ketama"),
        timeout=_get(values, "timeout", int, None),
        backlog=_get(values, "backlog", int, 512),
        client_connections=_get(values, "client_connections", int, 0),
        redis=_get(values, "redis", bool, False),
        tcpkeepalive=_get(values, "tcpkeepalive", bool, False),
        redis_auth=_get(values, "redis_auth", str, None),
        redis_db=_get(values, "redis_db", int, 0),
        preconnect=_get(values, "preconnect", bool, False),
        auto_eject_hosts=_get(values, "auto_eject_hosts", bool, False),
        server_connections=_get(values, "server_connections", int, 1),
        server_retry_timeout=_get(values, "server_retry_timeout", int, 30_000),
        server_failure_limit=_get(values, "server_failure_limit", int, 2),
    )


def _get(values: Mapping[str, object], key: str, kind: type[_T], default: _D) -> _T | _D:
    """``values[key]`` (which its handler made a ``kind``), or ``default``."""
    if key not in values:
        return default
    value = values[key]
    if not isinstance(value, kind):  # pragma: no cover - handlers guarantee it
        raise TypeError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def parse_twemproxy(text: str, *, source: str = "<string>") -> dict[str, TwemproxyPool]:
    """Parse the text of a nutcracker YAML file into its pools, in file order.

    ``source`` names the file in error messages.

    Raises:
        ConfigError: the YAML is malformed, uses YAML nutcracker refuses, or
            a pool or key is invalid. The message names ``source``, the pool
            and the key, for example ``nutcracker.yml: pool 'alpha': key
            'servers': entry '127.0.0.1:6379:0 s1' has a zero weight``.
    """
    ctx = _Context(source)
    _check_tokens(ctx, text)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(ctx, exc) from None
    if root is None:
        raise ConfigError(f"{source}: no pools (the file has no YAML document)")
    if not isinstance(root, yaml.MappingNode):
        raise ctx.error("the top level must map pool names to pools", node=root)
    pools: dict[str, TwemproxyPool] = {}
    for name_node, pool_node in root.value:
        name = _scalar_text(ctx, name_node, "a pool name", pool=None, key=None)
        if name in pools:
            raise ctx.error("is defined more than once", pool=name, node=name_node)
        pools[name] = _parse_pool(ctx, name, pool_node)
    if not pools:
        raise ConfigError(f"{source}: no pools")
    listeners: dict[str, str] = {}
    for pool in pools.values():
        other = listeners.setdefault(pool.listen.address, pool.name)
        if other != pool.name:
            raise ctx.error(
                f"has the same listen address {pool.listen.address!r} as pool {other!r}",
                pool=pool.name,
                key="listen",
            )
    return pools


MAX_CONFIG_BYTES = 16 << 20


def load_twemproxy(path: str | os.PathLike[str]) -> dict[str, TwemproxyPool]:
    """Read and parse the nutcracker YAML file at ``path``.

    Raises:
        ConfigError: the file cannot be read or is not valid UTF-8, or
            :func:`parse_twemproxy` rejects its contents.
    """
    source = os.fspath(path)
    try:
        with Path(path).open("rb") as f:  # bounded: a device or an endless file is refused, not read forever
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES} bytes; not a twemproxy configuration")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 at byte {exc.start}") from None
    return parse_twemproxy(text, source=source)
