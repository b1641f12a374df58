"""Consistent hashing for distpat's sharding components: the public API.

Every ring answers ``get_node(key)``, ``get_nodes(key, n)``, ``iter_nodes(key)``
and ``group(keys)``, and returns a new ring from ``add``, ``remove``,
``reweight`` and ``with_weights`` (rings are immutable snapshots).

===================  ==========================================================
``HashRing``         the default: murmur3 points (1024 per unit of weight),
                     one-index lookups, incremental membership changes
``KetamaRing``       twemproxy's ketama, placement identical to nutcracker's
``ModulaRing``       twemproxy's modula (hash modulo total weight)
``RandomRing``       twemproxy's random (the caller supplies the draws)
``MaglevRing``       Maglev lookup table: O(1) lookups, near-perfect balance
``RendezvousRing``   weighted highest-random-weight: exact, O(nodes) lookups
``JumpRing``         jump consistent hash over numbered shards
``BoundedLoads``     wraps any ring: no node above ``c`` x the mean load
===================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from distpat.core.ring import (
    DEFAULT_VNODES,
    BoundedLoads,
    HashRing,
    JumpRing,
    KetamaRing,
    Key,
    MaglevRing,
    ModulaRing,
    NginxChashRing,
    NodesArg,
    RandomRing,
    RendezvousRing,
    Ring,
    jump_hash,
)
from distpat.core.twemhash import TWEMPROXY_HASHES
from distpat.core.twemproxy_pool import TwemproxyPool
from distpat.errors import RingError, UnknownHashError

__all__ = [
    "ALGORITHMS",
    "DEFAULT_VNODES",
    "TWEMPROXY_HASHES",
    "BoundedLoads",
    "HashRing",
    "JumpRing",
    "KetamaRing",
    "Key",
    "MaglevRing",
    "ModulaRing",
    "NodesArg",
    "RandomRing",
    "RendezvousRing",
    "Ring",
    "from_twemproxy",
    "jump_hash",
    "make_ring",
]

ALGORITHMS: Mapping[str, Callable[..., Ring]] = {
    "hashring": HashRing,
    "ketama": KetamaRing,
    "modula": ModulaRing,
    "maglev": MaglevRing,
    "rendezvous": RendezvousRing,
    "jump": JumpRing,
    "nginx": NginxChashRing,
}
"""Ring classes by the names the CLI and configuration files use."""


def make_ring(algorithm: str, nodes: NodesArg, **options: Any) -> Ring:
    """A ring of the named algorithm (see :data:`ALGORITHMS`) over ``nodes``.

    Raises :class:`~distpat.errors.UnknownHashError` for an unknown algorithm
    and :class:`~distpat.errors.RingError` for bad nodes or options.
    """
    try:
        cls = ALGORITHMS[algorithm]
    except KeyError:
        raise UnknownHashError(
            f"unknown ring algorithm {algorithm!r}; choose one of: {', '.join(ALGORITHMS)}"
        ) from None
    return cls(nodes, **options)


def from_twemproxy(pool: TwemproxyPool, *, draw: Callable[[], int] | None = None) -> Ring:
    """The ring nutcracker dispatches ``pool`` with: keys land on the same servers.

    Nodes are the servers' ring names (``TwemproxyServer.ring_name``) in the
    order nutcracker keeps them (by name length, then bytes), which decides
    modula's slots and ketama's ties. ``distribution: random`` needs ``draw``, a
    function returning 32 random bits per call (``functools.partial(random.getrandbits,
    32)``): randomness comes from the caller, as everywhere in the core.
    """
    servers = {s.ring_name: s.weight for s in pool.dispatch_order}
    tag = pool.hash_tag or None
    if pool.distribution == "random":
        if draw is None:
            raise RingError(
                f"pool {pool.name!r}: distribution random needs a source of random draws (draw=...)"
            )
        return RandomRing(servers, draw=draw, hash=pool.hash, hash_tag=tag)
    return make_ring(pool.distribution, servers, hash=pool.hash, hash_tag=tag)
