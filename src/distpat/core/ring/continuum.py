"""A sorted continuum of 32-bit points with a slot table in front of it.

Both :class:`~distpat.core.ring.hashring.HashRing` and the twemproxy-compatible
:class:`~distpat.core.ring.ketama.KetamaRing` place a key on the first point at
or after the key's 32-bit hash, wrapping past the top. A binary search over
the points costs a dozen Python-level comparisons; instead the hash space is
cut into ``2**bits`` equal slots and a table remembers, for every slot that no
point falls inside, the node that owns the whole slot. A lookup is then one
hash and two indexings. A slot that points split (a few percent of them)
holds 0, and a side dict keeps its *resolver*: the points inside it and the
owner of each arc, searched with one short bisect. The table is an
accelerator only: placement is exactly that of the plain ring.

A ring may instead fix its grid (``grid_bits``): a key's position is then its
hash with the low ``32 - grid_bits`` bits set, the last value of its slot, so
every key of a slot lands on the same point (the first at or after the slot's
end) and no slot is ever split. ``HashRing`` does this with 2**18 slots: a
lookup is one hash and two indexings, always, and the table is the whole
answer. ``KetamaRing`` keeps exact 32-bit positions, as nutcracker does.

The table is an ``array`` of one-byte owner numbers (two bytes past 255
owners), so that 2**18 slots take 256 KiB and stay in a core's cache while
other work runs; a list of references would take 2 MiB.

Each point is stored with its owner as one 64-bit word, ``point << 32 |
owner_id``, in an ``array('Q')``, so that a membership change copies memory
rather than Python objects: adding a node to a ring of a million points merges
its points in with a few slice copies and refreshes only the slots its arcs
cover.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat

__all__ = ["Continuum", "Resolver", "table_bits"]

_SPACE = 1 << 32
_LOW = _SPACE - 1

Resolver = tuple[tuple[int, ...], tuple[str, ...]]
"""A split slot: the points inside it, and the owner for hashes up to each
point, plus, unless the last point ends the slot, the owner of the next point
for the hashes past it."""


def _typecode(owners: int) -> str:
    return "B" if owners < 255 else "H" if owners < 65535 else "I"


def _zeros(owners: int, size: int) -> array[int]:
    return array(_typecode(owners), [0]) * size


def table_bits(npoints: int) -> int:
    """How many bits of the hash index the slot table, for a ring of ``npoints`` points.

    The table pays off while few of its slots are split by a point: about
    ``1 - exp(-npoints / slots)`` of them are. Up to 2**15 points (32 nodes of
    1024 points) a table of 2**18 slots (256 KiB) leaves at most 12% split;
    2**20 slots serve up to 2**17 points. Past that a table would need more
    memory than it saves time, and would cost a copy on every membership
    change, so the ring has none (0 bits) and every lookup is a binary search.
    """
    if npoints < 4096:
        return 16
    if npoints <= 1 << 15:
        return 18
    if npoints <= 1 << 17:
        return 20
    return 0


class Continuum:
    """Immutable sorted points with their owners, and the slot table.

    ``keys[i] >> 32`` is a point and ``names[keys[i] & 0xFFFFFFFF]`` its
    owner. Among equal points the order is fixed by each owner's *rank* (a
    value supplied by the ring: the node name for ``HashRing``, the server's
    position for ketama), never by the order in which nodes were added, so
    placement does not depend on a ring's history.
    """

    __slots__ = ("_rank", "grid", "keys", "names", "shift", "slot_names", "splits", "table")

    keys: array[int]
    names: tuple[str | None, ...]
    table: array[int]
    slot_names: tuple[str | None, ...]
    splits: dict[int, Resolver]
    shift: int
    grid: bool

    def __init__(
        self,
        keys: array[int],
        names: tuple[str | None, ...],
        table: array[int],
        splits: dict[int, Resolver],
        shift: int,
        rank: Callable[[str], object],
        grid: bool = False,
    ) -> None:
        self.keys = keys
        self.names = names
        self.table = table  # slot -> owner id + 1, or 0 for a split slot
        self.slot_names = (None, *names)  # so that slot_names[table[s]] is the owner
        self.splits = splits
        self.shift = shift
        self._rank = rank
        self.grid = grid  # key positions are slot ends: no slot is split

    @classmethod
    def build(
        cls,
        members: Sequence[tuple[str, Iterable[int]]],
        rank: Callable[[str], object],
        grid_bits: int | None = None,
    ) -> Continuum:
        """A continuum from scratch: ``members`` pairs each name with its points.

        With ``grid_bits``, key positions are fixed to the ends of ``2**grid_bits``
        slots (see the module's docstring); without, they are exact and the
        table's size follows the number of points.
        """
        names = tuple(name for name, _ in members)
        order = sorted(range(len(names)), key=lambda i: rank(names[i]))  # type: ignore[arg-type, return-value]
        width = max(len(names) - 1, 1).bit_length()
        combined: list[int] = []
        for position, node_id in enumerate(order):
            combined.extend((p << width) | position for p in members[node_id][1])
        if not combined:
            raise ValueError("a continuum needs at least one point")
        combined.sort()
        mask = (1 << width) - 1
        keys = array("Q", [(c >> width) << 32 | order[c & mask] for c in combined])
        return cls._with_table(keys, names, rank, grid_bits)

    @classmethod
    def _with_table(
        cls,
        keys: array[int],
        names: tuple[str | None, ...],
        rank: Callable[[str], object],
        grid_bits: int | None,
    ) -> Continuum:
        bits = table_bits(len(keys)) if grid_bits is None else grid_bits
        # With no table, one 0 slot answers every index (a 32-bit hash shifted
        # right by 32 is 0, or -1 when signed), sending every lookup to the
        # binary search.
        out = cls(keys, names, _zeros(len(names), 1 << bits), {}, 32 - bits, rank, grid_bits is not None)
        if bits:
            out._fill(0, len(out.table), fresh=True)
        return out

    @property
    def grid_bits(self) -> int | None:
        return 32 - self.shift if self.grid else None

    def position(self, h: int) -> int:
        """Where unsigned 32-bit hash ``h`` sits on the ring: itself, or its slot's end on a fixed grid."""
        return h | ((1 << self.shift) - 1) if self.grid else h

    def __len__(self) -> int:
        return len(self.keys)

    # -- lookups -----------------------------------------------------------

    def index(self, h: int) -> int:
        """Index of the first point at or after unsigned hash ``h``'s position (wrapping)."""
        i = bisect_left(self.keys, self.position(h) << 32)
        return 0 if i == len(self.keys) else i

    def resolve(self, h: int) -> str:
        """The owner of unsigned 32-bit hash ``h`` when its slot holds 0 (split, or no table)."""
        split = self.splits.get(h >> self.shift)
        if split is None:
            return self.owner(h)
        return split[1][bisect_left(split[0], h)]

    def owner(self, h: int) -> str:
        """The owner of unsigned 32-bit hash ``h``, by binary search."""
        keys = self.keys
        i = bisect_left(keys, self.position(h) << 32)
        return self.names[keys[i if i < len(keys) else 0] & _LOW]  # type: ignore[return-value]

    def points(self) -> Iterator[tuple[int, str]]:
        """Every (point, owner) in ring order."""
        names = self.names
        for k in self.keys:
            yield k >> 32, names[k & _LOW]  # type: ignore[misc]

    def walk(self, h: int) -> Iterator[str]:
        """Owners of the points from ``h`` clockwise, once round the ring (with repeats)."""
        names, keys = self.names, self.keys
        start = self.index(h)
        for i in range(start, len(keys)):
            yield names[keys[i] & _LOW]  # type: ignore[misc]
        for i in range(start):
            yield names[keys[i] & _LOW]  # type: ignore[misc]

    def distinct(self, h: int, members: Iterable[str]) -> Iterator[str]:
        """Each of ``members`` once: owners clockwise from ``h``, then any that own no point."""
        remaining = dict.fromkeys(members)
        for name in self.walk(h):
            if name in remaining:
                del remaining[name]
                yield name
                if not remaining:
                    return
        yield from remaining

    def shares(self) -> dict[str, float]:
        """Each owner's fraction of the hash space."""
        if self.grid:
            slots, size = Counter(self.table), len(self.table)
            return {name: slots[i + 1] / size for i, name in enumerate(self.names) if name is not None}
        out = {name: 0 for name in self.names if name is not None}
        prev = (self.keys[-1] >> 32) - _SPACE
        for p, name in self.points():
            out[name] += p - prev
            prev = p
        return {name: arc / _SPACE for name, arc in out.items()}

    # -- the slot table ------------------------------------------------------

    def _fill(self, lo: int, hi: int, *, fresh: bool = False) -> None:
        """Recompute ``table[lo:hi]`` (and the resolvers of split slots) from the points.

        ``fresh`` says no resolver exists yet in the range, so none needs dropping.
        """
        if self.grid:
            self._fill_grid(lo, hi)
            return
        table, splits, keys, shift = self.table, self.splits, self.keys, self.shift
        names, code = self.names, table.typecode
        n = len(keys)
        s = lo
        i = bisect_left(keys, (lo << shift) << 32)
        while s < hi:
            if i == n:  # no point from here to the top: the wrap goes to the first point
                end = hi
                owner = (keys[0] & _LOW) + 1
            else:
                k = keys[i]
                ps = k >> 32 >> shift
                end = ps if ps < hi else hi
                owner = (k & _LOW) + 1
            if end > s:  # slots s .. end-1 hold no point: all of them belong to one owner
                if not fresh:
                    for x in range(s, end):
                        if not table[x]:
                            del splits[x]
                table[s:end] = array(code, [owner]) * (end - s)
                s = end
                continue
            last = ((s + 1) << shift) - 1
            j = bisect_left(keys, (last + 1) << 32, i)  # the first point past the slot
            if k >> 32 == last:  # the slot's only points sit on its last value: no split
                if not table[s] and not fresh:
                    del splits[s]
                table[s] = owner
            else:
                inside = keys[i:j]
                owners = [names[x & _LOW] for x in inside]
                if inside[-1] >> 32 != last:  # hashes past the last point go to the next one
                    owners.append(names[keys[j if j < n else 0] & _LOW])
                table[s] = 0
                splits[s] = (tuple(x >> 32 for x in inside), tuple(owners))  # type: ignore[arg-type]
            i = j
            s += 1

    def _fill_grid(self, lo: int, hi: int) -> None:
        """``_fill`` on a fixed grid: slot ``s`` belongs to the first point at or after its last value."""
        table, keys, shift = self.table, self.keys, self.shift
        code, low, n = table.typecode, (1 << shift) - 1, len(keys)
        if lo == 0 and hi == len(table):  # the whole table: one pass over the points
            owners: list[int] = []
            s = 0
            for k in keys:
                end = ((k >> 32) + 1) >> shift
                if end > s:  # this point is the first at or after the ends of slots s .. end-1
                    owners += repeat((k & _LOW) + 1, end - s)
                    s = end
            owners += repeat((keys[0] & _LOW) + 1, hi - s)
            table[:] = array(code, owners)
            return
        i, s = 0, lo
        while s < hi:
            i = bisect_left(keys, ((s << shift) | low) << 32, i)
            if i == n:  # no point from here to the top: the wrap goes to the first point
                end, owner = hi, (keys[0] & _LOW) + 1
            else:
                k = keys[i]
                # the slots whose last value is at most this point; at least slot s
                end, owner = min(hi, ((k >> 32) + 1) >> shift), (k & _LOW) + 1
            table[s:end] = array(code, [owner]) * (end - s)
            s = end

    def _refresh_arc(self, j: int, p: int) -> None:
        """Recompute the slots of the arc ending at value ``p``, whose owner is now point ``j``.

        ``p`` is a point that was added (it is at ``j``) or removed (``j`` is
        its successor). The arc runs from just past the point before ``j`` to
        ``p``; every slot it touches may have changed.
        """
        keys, shift = self.keys, self.shift
        n = len(keys)
        prev = keys[j - 1] >> 32 if j > 0 else (keys[n - 1] >> 32) - _SPACE
        lo = prev + 1
        if lo < 0:  # the arc wraps past the top of the hash space
            self._fill((lo + _SPACE) >> shift, _SPACE >> shift)
            lo = 0
        # An arc can be empty (a point equal to the one before it): its slot
        # still lists the point, so it is refreshed all the same.
        self._fill(min(lo, p) >> shift, (p >> shift) + 1)

    # -- incremental change ---------------------------------------------------

    def change(
        self,
        remove: Iterable[tuple[str, Iterable[int]]],
        add: Iterable[tuple[str, Iterable[int]]],
        gone: Iterable[str] = (),
    ) -> Continuum:
        """A new continuum with some owners' points taken out and others put in.

        ``remove`` lists points by owner name (each must be present); ``add``
        lists new points by owner name (a new name gets a new id); ``gone``
        names the owners that leave altogether (all their points are in
        ``remove``). Only the slots covering the arcs that changed are
        recomputed.
        """
        names = list(self.names)
        ids = {name: i for i, name in enumerate(names) if name is not None}
        rank = self._rank
        keys = self.keys
        n = len(keys)
        # Positions are found through a sampled index that is a plain list
        # (cheap comparisons), then inside one short window of the array.
        step = 256
        sample = keys[::step].tolist()

        def position(x: int) -> int:
            w = bisect_left(sample, x)
            return bisect_left(keys, x, max(0, (w - 1) * step), min(n, w * step))

        dropped: set[int] = set()  # positions in the old array to drop
        for name, pts in remove:
            node_id = ids[name]
            for p in pts:
                i = position(p << 32)
                while keys[i] & _LOW != node_id or i in dropped:
                    i += 1
                dropped.add(i)
        insertions: list[tuple[int, int, object, int]] = []  # (old position, point, rank, id)
        for name, pts in add:
            node_id = ids.get(name, -1)
            if node_id < 0:
                node_id = ids[name] = len(names)
                names.append(name)
            r = rank(name)
            for p in pts:
                i = position(p << 32)
                while i < n and keys[i] >> 32 == p and rank(names[keys[i] & _LOW]) < r:  # type: ignore[arg-type, operator]
                    i += 1
                insertions.append((i, p, r, node_id))
        for name in gone:
            names[ids[name]] = None

        # Merge in runs of slice copies, noting where each changed arc now ends.
        drops = sorted(dropped)
        insertions.sort()
        insertions.append((n, -1, None, -1))
        total = n - len(drops) + len(insertions) - 1
        if total == 0:
            raise ValueError("a continuum needs at least one point")
        # Runs of untouched points are appended as raw bytes: one memcpy each
        # (and growing a large array remaps pages rather than copying them).
        new_keys: array[int] = array("Q")
        src = memoryview(keys).cast("B")
        ends: list[tuple[int, int]] = []  # (new index of the arc's owner, arc end value)
        cursor = d = 0
        for pos, p, _, node_id in insertions:
            while d < len(drops) and drops[d] < pos:
                new_keys.frombytes(src[8 * cursor : 8 * drops[d]])
                ends.append((len(new_keys), keys[drops[d]] >> 32))
                cursor = drops[d] + 1
                d += 1
            new_keys.frombytes(src[8 * cursor : 8 * pos])
            cursor = pos
            if node_id >= 0:
                ends.append((len(new_keys), p))
                new_keys.append(p << 32 | node_id)
        src.release()

        if sum(1 for name in names if name is None) > len(names) // 2 + 8:
            return Continuum._compacted(new_keys, names, rank, self.grid_bits)
        shift = self.shift if self.grid else 32 - table_bits(total)
        if shift != self.shift or _typecode(len(names)) != self.table.typecode:
            return Continuum._with_table(new_keys, tuple(names), rank, self.grid_bits)
        out = Continuum(new_keys, tuple(names), self.table[:], self.splits.copy(), shift, rank, self.grid)
        if shift < 32:
            for j, p in ends:
                out._refresh_arc(j, p)
        return out

    @classmethod
    def _compacted(
        cls,
        keys: array[int],
        names: list[str | None],
        rank: Callable[[str], object],
        grid_bits: int | None,
    ) -> Continuum:
        """The same points with owner ids renumbered (after many owners left)."""
        live = [i for i, name in enumerate(names) if name is not None]
        remap = {old: new for new, old in enumerate(live)}
        keys = array("Q", [(k >> 32) << 32 | remap[k & _LOW] for k in keys])
        return cls._with_table(keys, tuple(names[i] for i in live), rank, grid_bits)
