"""Consistent hashing: every placement algorithm behind one lookup interface.

See :mod:`distpat.ring` for the public API and ``docs/ring.md`` for when to
choose which.
"""

from distpat.core.ring.base import Key, NodesArg, Ring
from distpat.core.ring.bounded import BoundedLoads
from distpat.core.ring.hashring import DEFAULT_VNODES, HashRing
from distpat.core.ring.jump import JumpRing, jump_hash
from distpat.core.ring.ketama import KetamaRing, ModulaRing, RandomRing
from distpat.core.ring.maglev import MaglevRing
from distpat.core.ring.nginx_chash import NginxChashRing
from distpat.core.ring.rendezvous import RendezvousRing

__all__ = [
    "DEFAULT_VNODES",
    "BoundedLoads",
    "HashRing",
    "JumpRing",
    "KetamaRing",
    "Key",
    "MaglevRing",
    "ModulaRing",
    "NginxChashRing",
    "NodesArg",
    "RandomRing",
    "RendezvousRing",
    "Ring",
    "jump_hash",
]
