"""The cache's in-memory store: a byte-bounded LRU of responses, several Vary variants per URL.

Pure (no clock, no I/O): :class:`MemoryStore` holds :class:`Entry` values under a primary key
(the request's host and target) and, within it, a variant key (the request's values of the
fields the response varies on). It counts every entry's size as its body plus its header
fields plus a fixed overhead (:data:`ENTRY_OVERHEAD`), and evicts least recently used entries
until a new one fits under ``max_bytes``; an entry larger than ``max_object_bytes`` is never
stored. It indexes tags (``Cache-Tag`` / ``Surrogate-Key``) so that a ban by tag or by prefix
removes every variant it names at once, and answers how many went.

An entry also carries the stage's prebuilt answer for its current age (:attr:`Entry.memo`),
so that a hit builds nothing but what changes once a second.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from distpat.core.cache_policy import Stored
from distpat.errors import ConfigError

__all__ = ["ENTRY_OVERHEAD", "Entry", "MemoryStore"]

ENTRY_OVERHEAD = 512
"""Bytes counted for one entry beyond its body and fields (its objects and index slots)."""

VariantKey = tuple[bytes | None, ...]


@dataclass(slots=True, eq=False)
class Entry:
    """One stored response."""

    key: bytes
    """The primary key: host and target."""
    stored: Stored
    body: bytes
    size: int = 0
    memo: tuple[int, object] | None = field(default=None, repr=False)
    """(age in whole seconds, the stage's answer for it), kept by the stage."""

    @property
    def variant(self) -> VariantKey:
        return self.stored.vary_key


def entry_size(stored: Stored, body: bytes) -> int:
    return len(body) + sum(len(n) + len(v) + 4 for n, v in stored.headers) + ENTRY_OVERHEAD


class MemoryStore:
    """Entries under a byte bound (see the module's docstring). Every operation is O(1) but the
    bans, which are O(entries removed) for a tag and O(keys) for a prefix."""

    def __init__(self, max_bytes: int, max_object_bytes: int) -> None:
        if max_bytes < 1 or max_object_bytes < 1:
            raise ConfigError("the cache's max_bytes and max_object_bytes must be at least 1 byte")
        self.max_bytes = max_bytes
        self.max_object_bytes = min(max_object_bytes, max_bytes)
        self._lru: OrderedDict[tuple[bytes, VariantKey], Entry] = OrderedDict()
        self._keys: dict[bytes, dict[VariantKey, Entry]] = {}
        self._tags: dict[bytes, set[tuple[bytes, VariantKey]]] = {}
        self.bytes_held = 0
        self.evictions = 0

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._lru)} entries, {self.bytes_held}/{self.max_bytes} bytes>"

    def __len__(self) -> int:
        return len(self._lru)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._lru.values())

    def variants(self, key: bytes) -> dict[VariantKey, Entry] | None:
        """The entries stored under ``key`` by variant key (do not change the mapping)."""
        return self._keys.get(key)

    def holds(self, entry: Entry) -> bool:
        """Whether ``entry`` is still the one stored in its slot (not evicted, purged or replaced)."""
        return self._lru.get((entry.key, entry.stored.vary_key)) is entry

    def touch(self, entry: Entry) -> None:
        """``entry`` was used: it becomes the most recently used (nothing, if it is no longer held)."""
        slot = (entry.key, entry.stored.vary_key)
        if self._lru.get(slot) is entry:
            self._lru.move_to_end(slot)

    def fits(self, size: int) -> bool:
        return size <= self.max_object_bytes

    def put(self, key: bytes, stored: Stored, body: bytes) -> Entry | None:
        """Store a response (replacing the same variant's); None when it is too large to store."""
        size = entry_size(stored, body)
        if size > self.max_object_bytes:
            return None
        entry = Entry(key, stored, body, size)
        slot = (key, stored.vary_key)
        old = self._lru.get(slot)
        if old is not None:
            self._drop(old)
        while self._lru and self.bytes_held + size > self.max_bytes:
            _, victim = next(iter(self._lru.items()))
            self._drop(victim)
            self.evictions += 1
        self._lru[slot] = entry
        self._keys.setdefault(key, {})[stored.vary_key] = entry
        for tag in stored.tags:
            self._tags.setdefault(tag, set()).add(slot)
        self.bytes_held += size
        return entry

    def replace(self, entry: Entry, stored: Stored) -> Entry | None:
        """``entry`` with new fields (a 304 freshened it), its body kept: the new entry, or None
        when ``entry`` is no longer held (something newer took its slot) or no longer fits."""
        if not self.holds(entry):
            return None
        self._drop(entry)
        return self.put(entry.key, stored, entry.body)

    def _drop(self, entry: Entry) -> None:
        slot = (entry.key, entry.stored.vary_key)
        if self._lru.get(slot) is not entry:  # gone already, or a newer entry holds the slot
            return
        del self._lru[slot]
        variants = self._keys.get(entry.key)
        if variants is not None:
            variants.pop(entry.stored.vary_key, None)
            if not variants:
                del self._keys[entry.key]
        for tag in entry.stored.tags:
            slots = self._tags.get(tag)
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del self._tags[tag]
        self.bytes_held -= entry.size

    def remove(self, entry: Entry) -> None:
        self._drop(entry)

    def purge(self, key: bytes) -> int:
        """Remove every variant stored under ``key``; how many went."""
        variants = self._keys.get(key)
        if not variants:
            return 0
        entries = list(variants.values())
        for entry in entries:
            self._drop(entry)
        return len(entries)

    def ban_prefix(self, prefix: bytes) -> int:
        """Remove every entry whose primary key starts with ``prefix``; how many went."""
        keys = [k for k in self._keys if k.startswith(prefix)]
        return sum(self.purge(k) for k in keys)

    def ban_tag(self, tag: bytes) -> int:
        """Remove every entry tagged ``tag``; how many went."""
        slots = list(self._tags.get(tag, ()))
        count = 0
        for slot in slots:
            entry = self._lru.get(slot)
            if entry is not None:
                self._drop(entry)
                count += 1
        return count
