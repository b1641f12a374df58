"""The values of a twemproxy (nutcracker) configuration, and how one server or listen line is read.

:class:`TwemproxyServer`, :class:`TwemproxyListen` and :class:`TwemproxyPool`, and the parsers
that turn the literal text of a ``servers:`` entry or a ``listen:`` value into them, as twemproxy
0.5.0 reads them (``src/nc_conf.c``). Pure (no I/O, no clock), so :mod:`distpat.net` may import it;
:mod:`distpat.config.twemproxy` loads whole files and re-exports the public names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from distpat.core.twemhash import TWEMPROXY_HASHES, HashFunction
from distpat.errors import ConfigError

__all__ = [
    "TWEMPROXY_DISTRIBUTIONS",
    "TWEMPROXY_KETAMA_PORT",
    "TwemproxyListen",
    "TwemproxyPool",
    "TwemproxyServer",
]

TWEMPROXY_DISTRIBUTIONS: Final = ("ketama", "modula", "random")
"""Names twemproxy accepts for ``distribution:``."""

TWEMPROXY_KETAMA_PORT: Final = 11211
"""A server on this port is named by its host alone (libmemcached compatible)."""

_INT_MAX: Final = 2**31 - 1


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
