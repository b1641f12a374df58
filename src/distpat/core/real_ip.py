"""The client's address behind trusted proxies: nginx's ``set_real_ip_from`` with
``real_ip_header X-Forwarded-For`` and ``real_ip_recursive on`` (ngx_http_realip_module.c,
``ngx_http_get_forwarded_addr_internal`` in ngx_http_core_module.c, ``ngx_parse_addr_port``
and ``ngx_cidr_match`` in ngx_inet.c), rule for rule:

- A peer that is not a trusted proxy is the client, whatever X-Forwarded-For says (a client
  cannot spoof its address by sending the field itself).
- From a trusted peer, the field is read from the right: each entry is the address the proxy
  before it saw; trusted entries are skipped, and the first untrusted one is the client. When
  every entry is trusted, the left-most is.
- Entries are separated by runs of spaces and commas (only those two; a tab is part of an
  entry). An entry that is not an address stops the walk: the last address read (trusted, the
  one to its right) is the client; when the right-most entry is already not an address, the
  peer is. As in nginx, the value's first byte is never read as a separator: in a value that
  starts with ``,`` the comma belongs to the left-most entry, which is then unreadable.
- An entry may carry a port, as ``ngx_parse_addr_port`` allows: ``1.2.3.4:8080``,
  ``[2001:db8::1]:8080`` and ``[2001:db8::1]``; the port (1..65535) is dropped. An
  unbracketed IPv6 address takes no port.
- IPv4 is read as nginx's ``ngx_inet_addr`` reads it: four decimal octets of at most 255,
  leading zeros allowed (``010.0.0.1`` is 10.0.0.1) and an empty octet read as 0. IPv6 is read
  by :mod:`ipaddress` (RFC 4291 text forms, an IPv4 tail allowed); zone ids (``%eth0``) are
  refused, as nginx refuses them. nginx accepts a few odd IPv6 spellings that are refused here
  (the walk stops at them).
- An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is matched against the IPv4 networks, as
  ``ngx_cidr_match`` does, for the peer and for entries alike.
- The address found is written as nginx's ``$remote_addr`` writes it (``ngx_inet6_ntop``:
  lowercase, the first longest run of two or more zero groups as ``::``, a dotted IPv4 tail for
  ``::ffff:a.b.c.d`` and ``::a.b.c.d``); a peer that is the client is returned as given.

One difference from nginx, by design: nginx walks repeated X-Forwarded-For fields one by one,
the engine joins them with ``", "`` first. The two agree except for a field after the first that
holds only spaces and commas or starts with a comma: nginx's walk stops there, here the
separators are skipped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from distpat.core.keys import KeySource
from distpat.core.stage import Request
from distpat.errors import ConfigError

__all__ = ["FORWARDED_FOR", "TrustedProxies", "client_address", "real_client", "real_key"]

FORWARDED_FOR = b"x-forwarded-for"
"""The field :func:`real_client` reads (lowercase, for ``Stage.reads``)."""

_SEPARATORS = b" ,"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class _Address:
    """A parsed address: the IP version (4 or 6) and its value as an integer."""

    version: int
    value: int

    def text(self) -> str:
        if self.version == 4:
            return str(ipaddress.IPv4Address(self.value))
        return _ntop6(self.value)


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The proxies whose X-Forwarded-For is believed (``--trusted-proxy``, nginx's
    ``set_real_ip_from``): IPv4 and IPv6 networks, a bare address meaning one host.

    A network with host bits set (``10.0.0.1/8``) is refused: nginx accepts it with a warning
    that the low bits are meaningless and trusts the whole network, which is usually not what
    the operator meant."""

    networks: tuple[_Network, ...]
    _v4: tuple[tuple[int, int], ...] = field(repr=False, compare=False)
    _v6: tuple[tuple[int, int], ...] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, items: Iterable[str]) -> TrustedProxies:
        """Raises :class:`ConfigError` naming the bad entry and what would be accepted."""
        if isinstance(items, str | bytes):
            raise ConfigError("trusted proxies: give a list of addresses or networks, not one string")
        networks: list[_Network] = []
        for item in items:
            if not isinstance(item, str):
                raise ConfigError(f"trusted proxy {item!r}: an address or network is text (10.0.0.0/8, ::1)")
            text = item.strip()
            if "%" in text:
                raise ConfigError(f"trusted proxy {item!r}: a zone id (%...) cannot be matched")
            try:
                network = ipaddress.ip_network(text, strict=True)
            except ValueError as error:
                try:
                    loose = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"trusted proxy {item!r}: not an IPv4 or IPv6 address or network "
                        "(10.0.0.0/8, 127.0.0.1, ::1, fd00::/8)"
                    ) from error
                raise ConfigError(
                    f"trusted proxy {item!r}: host bits are set; the network is {loose} "
                    f"(or write the one address {text.partition('/')[0]})"
                ) from error
            networks.append(network)
        v4 = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 4)
        v6 = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 6)
        return cls(tuple(networks), v4, v6)

    @property
    def reads(self) -> frozenset[bytes]:
        """The request fields :func:`real_client` needs with these proxies (for ``Stage.reads``):
        X-Forwarded-For, or none when no proxy is trusted."""
        return frozenset((FORWARDED_FOR,)) if self.networks else frozenset()

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (text, as a peer's) is in one of the networks."""
        parsed = _parse_addr(address.encode("ascii", "replace"))
        return parsed is not None and self._trusts(parsed)

    def _trusts(self, address: _Address) -> bool:
        version, value = address.version, address.value
        if version == 6 and value >> 32 == 0xFFFF:  # IPv4-mapped: matched as IPv4
            version, value = 4, value & 0xFFFFFFFF
        networks = self._v4 if version == 4 else self._v6
        return any(value & mask == net for net, mask in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks)


def client_address(
    peer: str, forwarded_for: bytes | None, trusted: TrustedProxies, *, recursive: bool = True
) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, else read from
    ``forwarded_for`` (X-Forwarded-For, repeated fields joined with ``", "``) by the rules of
    the module's docstring. ``recursive=False`` is ``real_ip_recursive off``: the right-most
    entry is the client, trusted or not."""
    if forwarded_for is None or not trusted.networks:
        return peer
    current = _parse_addr(peer.encode("ascii", "replace"))
    if current is None:
        return peer
    found: _Address | None = None
    value = forwarded_for
    end = len(value)
    while trusted._trusts(current):
        if end == 0:  # an empty value: no address
            break
        i = end - 1
        while i > 0 and value[i] in _SEPARATORS:
            i -= 1
        end = i + 1
        while i > 0 and value[i] not in _SEPARATORS:
            i -= 1
        start = i + 1 if i > 0 else 0
        entry = _parse_addr_port(value[start:end])
        if entry is None:
            break
        current = found = entry
        if not recursive or start == 0:
            break
        end = start - 1
    return peer if found is None else found.text()


def real_client(request: Request, trusted: TrustedProxies | None) -> str:
    """The client of ``request`` behind ``trusted`` proxies (its peer when None or empty).
    The stage that calls it declares ``trusted.reads`` among its :attr:`Stage.reads`."""
    if not trusted:
        return request.client
    return client_address(request.client, request.field(FORWARDED_FOR), trusted)


def real_key(source: KeySource, request: Request, trusted: TrustedProxies | None) -> bytes | None:
    """``source.extract(request)`` with ``ip`` meaning :func:`real_client` (nginx's
    ``$remote_addr`` once the realip module has run). ``KeySource`` is left as it is."""
    if not trusted or all(part.kind != "ip" for part in source.parts):
        return source.extract(request)
    client = real_client(request, trusted)
    if client == request.client:
        return source.extract(request)
    view = Request(
        request.method,
        request.target,
        client,
        request.scheme,
        request.http10,
        request.fields,
        request.headers,
        request.pools,
    )
    return source.extract(view)


def _parse_v4(text: bytes) -> int | None:
    """nginx's ``ngx_inet_addr``: digits and exactly three dots, each octet at most 255."""
    value = octet = dots = 0
    for c in text:
        if 0x30 <= c <= 0x39:
            octet = octet * 10 + c - 0x30
            if octet > 255:
                return None
        elif c == 0x2E:
            value = (value << 8) + octet
            octet = 0
            dots += 1
        else:
            return None
    if dots != 3:
        return None
    return (value << 8) + octet


def _parse_addr(text: bytes) -> _Address | None:
    """``ngx_parse_addr``: an IPv4 or IPv6 address, no port, no brackets."""
    v4 = _parse_v4(text)
    if v4 is not None:
        return _Address(4, v4)
    if not text or b":" not in text or any(c not in b"0123456789abcdefABCDEF:." for c in text):
        return None
    try:
        return _Address(6, int(ipaddress.IPv6Address(text.decode("ascii"))))
    except ValueError:
        return None


def _parse_addr_port(text: bytes) -> _Address | None:
    """``ngx_parse_addr_port``: an address, ``[v6]``, ``[v6]:port`` or ``v4:port``."""
    address = _parse_addr(text)
    if address is not None:
        return address
    if text.startswith(b"["):
        close = text.find(b"]")
        if close == len(text) - 1:
            return _parse_addr(text[1:-1])
        if close < 0 or text[close + 1 : close + 2] != b":":
            return None
        host, port = text[1:close], text[close + 2 :]
    else:
        host, colon, port = text.partition(b":")
        if not colon:
            return None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return _parse_addr(host)


def _ntop6(value: int) -> str:
    """``ngx_inet6_ntop``: the text nginx writes for an IPv6 address."""
    groups = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    zero, best, run, start = -1, 1, 0, -1
    for i, group in enumerate(groups):
        if group:
            if run > best:
                zero, best = start, run
            run = 0
        else:
            if run == 0:
                start = i
            run += 1
    if run > best:
        zero, best = start, run
    count = 8
    out = ""
    if zero == 0:
        if (
            (best == 5 and groups[5] == 0xFFFF)
            or best == 6
            or (best == 7 and value & 0xFF00 and value & 0xFF != 1)
        ):
            count = 6
        out = ":"
    i = 0
    while i < count:
        if i == zero:
            out += ":"
            i += best
            continue
        out += f"{groups[i]:x}"
        if i < 7:
            out += ":"
        i += 1
    if count == 6:
        out += ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))
    return out
