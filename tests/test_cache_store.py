"""The cache's in-memory store with no sockets: the byte bound over any sequence of operations
(checked against a model), LRU order, Vary variants (RFC 9111 section 4.1), purges and bans."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.cache_control import Directives
from distpat.core.cache_policy import Stored
from distpat.core.cache_store import ENTRY_OVERHEAD, MemoryStore, entry_size
from distpat.errors import ConfigError

NOW = 1_800_000_000.0


def stored(variant: bytes | None = b"v", tags: frozenset[bytes] = frozenset(), extra: bytes = b"") -> Stored:
    """A stored response varying on X-V, of that variant (headers ``X-Pad: extra``)."""
    headers = ((b"X-Pad", extra),) if extra else ()
    return Stored(
        200, headers, NOW, NOW, (b"x-v",), (variant,), Directives(present=True), 0.0, 60.0, None, None, tags
    )


def size(body: bytes, s: Stored | None = None) -> int:
    return entry_size(s if s is not None else stored(), body)


def held(store: MemoryStore) -> list[tuple[bytes, bytes | None]]:
    """The (key, variant) of every entry, least recently used first."""
    return [(e.key, e.variant[0]) for e in store]


class TestBasics:
    """The store's bound and sizes."""

    def test_sizes(self) -> None:
        """An entry counts its body, its fields (4 bytes each beyond name and value) and the overhead."""
        s = stored(extra=b"abc")
        assert entry_size(s, b"12345") == 5 + (5 + 3 + 4) + ENTRY_OVERHEAD

    @pytest.mark.parametrize(("max_bytes", "max_object"), [(0, 10), (10, 0), (-1, -1)])
    def test_bounds_must_be_positive(self, max_bytes: int, max_object: int) -> None:
        """A store of no bytes is a configuration error."""
        with pytest.raises(ConfigError):
            MemoryStore(max_bytes, max_object)

    def test_max_object_is_at_most_max_bytes(self) -> None:
        """An object larger than the whole store could never be held."""
        assert MemoryStore(1000, 5000).max_object_bytes == 1000

    def test_an_object_over_max_object_bytes_is_refused(self) -> None:
        """The store refuses it and evicts nothing for it."""
        store = MemoryStore(10_000, ENTRY_OVERHEAD + 100)
        assert store.put(b"h/a", stored(b"1"), b"x" * 100) is not None
        assert not store.fits(size(b"x" * 101))
        assert store.put(b"h/b", stored(b"1"), b"x" * 101) is None
        assert held(store) == [(b"h/a", b"1")]
        assert store.evictions == 0

    def test_a_too_large_replacement_keeps_the_old_entry(self) -> None:
        """A refused put of the same variant leaves the stored one."""
        store = MemoryStore(10_000, ENTRY_OVERHEAD + 100)
        first = store.put(b"h/a", stored(b"1"), b"x")
        assert store.put(b"h/a", stored(b"1"), b"x" * 200) is None
        assert list(store) == [first]


class TestLru:
    """Least recently used entries are evicted first; ``touch`` marks use."""

    def test_eviction_order_and_count(self) -> None:
        """The oldest goes first, and each eviction is counted."""
        one = size(b"x")
        store = MemoryStore(3 * one, one)
        for key in (b"h/a", b"h/b", b"h/c"):
            store.put(key, stored(), b"x")
        store.touch(next(iter(store)))  # h/a used: h/b is now the oldest
        store.put(b"h/d", stored(), b"x")
        assert held(store) == [(b"h/c", b"v"), (b"h/a", b"v"), (b"h/d", b"v")]
        assert store.evictions == 1
        assert store.bytes_held == 3 * one

    def test_a_large_entry_evicts_several(self) -> None:
        """Entries go until the new one fits."""
        small = size(b"")
        store = MemoryStore(4 * small, 4 * small)
        for key in (b"h/a", b"h/b", b"h/c", b"h/d"):
            store.put(key, stored(), b"")
        store.put(b"h/e", stored(), b"x" * (2 * small))
        assert held(store) == [(b"h/d", b"v"), (b"h/e", b"v")]
        assert store.evictions == 3
        assert store.bytes_held <= store.max_bytes


class TestVariants:
    """RFC 9111 section 4.1: several responses under one key, one per variant."""

    def test_variants_coexist(self) -> None:
        """Section 4.1: each selecting value has its own stored response."""
        store = MemoryStore(10_000, 10_000)
        store.put(b"h/a", stored(b"gzip"), b"1")
        store.put(b"h/a", stored(None), b"2")
        variants = store.variants(b"h/a")
        assert variants is not None
        assert {k: e.body for k, e in variants.items()} == {(b"gzip",): b"1", (None,): b"2"}

    def test_replacing_a_variant(self) -> None:
        """Section 4.1 / 3.2: a new response of the same variant replaces the stored one."""
        store = MemoryStore(10_000, 10_000)
        store.put(b"h/a", stored(b"gzip"), b"old body")
        new = store.put(b"h/a", stored(b"gzip"), b"new")
        assert list(store) == [new]
        assert store.bytes_held == size(b"new")
        assert store.evictions == 0

    def test_replace_keeps_the_body(self) -> None:
        """Section 4.3.4: a 304 freshens the fields; the body stays."""
        store = MemoryStore(10_000, 10_000)
        entry = store.put(b"h/a", stored(b"1", frozenset({b"t"})), b"body")
        assert entry is not None
        new = store.replace(entry, stored(b"1", frozenset({b"u"}), extra=b"pad"))
        assert list(store) == [new]
        assert (new.body, new.stored.headers) == (b"body", ((b"X-Pad", b"pad"),))
        assert store.bytes_held == new.size
        assert store.ban_tag(b"t") == 0
        assert store.ban_tag(b"u") == 1


class TestPurgeAndBans:
    """PURGE of a key, bans by prefix and by tag: every variant named goes, and the count is told."""

    def filled(self) -> MemoryStore:
        store = MemoryStore(100_000, 10_000)
        store.put(b"h/a", stored(b"1", frozenset({b"red"})), b"")
        store.put(b"h/a", stored(b"2", frozenset({b"red", b"blue"})), b"")
        store.put(b"h/a/b", stored(b"1", frozenset({b"blue"})), b"")
        store.put(b"h/b", stored(b"1"), b"")
        store.put(b"other/a", stored(b"1", frozenset({b"red"})), b"")
        return store

    def test_purge(self) -> None:
        """A purge removes every variant of the key and answers how many."""
        store = self.filled()
        assert store.purge(b"h/a") == 2
        assert store.variants(b"h/a") is None
        assert store.purge(b"h/a") == 0
        assert len(store) == 3

    def test_ban_prefix(self) -> None:
        """A prefix ban removes every entry whose key starts with it."""
        store = self.filled()
        assert store.ban_prefix(b"h/a") == 3
        assert held(store) == [(b"h/b", b"1"), (b"other/a", b"1")]
        assert store.ban_prefix(b"nothing") == 0

    def test_ban_tag(self) -> None:
        """A tag ban removes every entry tagged so, across keys."""
        store = self.filled()
        assert store.ban_tag(b"red") == 3
        assert store.ban_tag(b"red") == 0
        assert store.ban_tag(b"blue") == 1
        assert held(store) == [(b"h/b", b"1")]
        assert store.bytes_held == sum(e.size for e in store)

    def test_removing_a_superseded_entry_keeps_the_new_one(self) -> None:
        """An entry the stage still holds after a newer response took its slot (a validation racing
        a miss): removing it must not remove the newer one nor miscount the bytes."""
        store = MemoryStore(100_000, 10_000)
        old = store.put(b"h/a", stored(b"1"), b"x" * 10)
        new = store.put(b"h/a", stored(b"1"), b"y" * 1000)
        assert old is not None
        store.remove(old)
        assert list(store) == [new]
        assert store.bytes_held == sum(e.size for e in store)

    def test_a_too_large_freshened_entry_returns_an_entry_the_store_holds(self) -> None:
        """A 304 whose fields make the entry too large: replace says so (None), and the store
        neither holds the old entry nor counts its bytes."""
        store = MemoryStore(100_000, ENTRY_OVERHEAD + 100)
        entry = store.put(b"h/a", stored(b"1"), b"x" * 90)
        assert entry is not None
        back = store.replace(entry, stored(b"1", extra=b"p" * 50))
        assert back is None
        assert not store.holds(entry)
        assert (len(store), store.bytes_held) == (0, 0)
        store.touch(entry)  # an entry no longer held: nothing happens


# -- the byte bound over any sequence of operations, against a model ----------------------------

KEYS = (b"h/a", b"h/ab", b"h/b", b"g/a")
TAGS = (b"red", b"blue")

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(KEYS),
            st.sampled_from((b"1", b"2", None)),
            st.integers(min_value=0, max_value=1500),
            st.frozensets(st.sampled_from(TAGS)),
        ),
        st.tuples(st.just("touch"), st.sampled_from(KEYS), st.sampled_from((b"1", b"2", None))),
        st.tuples(st.just("purge"), st.sampled_from(KEYS)),
        st.tuples(st.just("prefix"), st.sampled_from((b"h/a", b"h/", b"g", b"x"))),
        st.tuples(st.just("tag"), st.sampled_from(TAGS)),
    ),
    max_size=40,
)

Slot = tuple[bytes, bytes | None]


class Model:
    """What the store should hold: slots in LRU order with their sizes and tags."""

    def __init__(self, max_bytes: int, max_object: int) -> None:
        self.max_bytes = max_bytes
        self.max_object = min(max_object, max_bytes)
        self.lru: OrderedDict[Slot, tuple[int, frozenset[bytes]]] = OrderedDict()
        self.evictions = 0

    def put(self, slot: Slot, n: int, tags: frozenset[bytes]) -> bool:
        if n > self.max_object:
            return False
        self.lru.pop(slot, None)
        while self.lru and sum(s for s, _ in self.lru.values()) + n > self.max_bytes:
            self.lru.popitem(last=False)
            self.evictions += 1
        self.lru[slot] = (n, tags)
        return True

    def _remove(self, gone: list[Slot]) -> int:
        for slot in gone:
            del self.lru[slot]
        return len(gone)

    def purge(self, key: bytes) -> int:
        return self._remove([slot for slot in self.lru if slot[0] == key])

    def ban_prefix(self, prefix: bytes) -> int:
        return self._remove([slot for slot in self.lru if slot[0].startswith(prefix)])

    def ban_tag(self, tag: bytes) -> int:
        return self._remove([slot for slot, (_, tags) in self.lru.items() if tag in tags])


@given(
    ops=operations,
    max_bytes=st.integers(min_value=ENTRY_OVERHEAD, max_value=6000),
    max_object=st.integers(min_value=ENTRY_OVERHEAD, max_value=3000),
)
def test_the_bound_holds_and_the_store_matches_its_model(
    ops: list[tuple[object, ...]], max_bytes: int, max_object: int
) -> None:
    """Over any sequence of puts, touches, purges and bans: bytes held never exceed the bound and
    are the sum of the entries' sizes; entries, LRU order, counts and evictions are the model's."""
    store = MemoryStore(max_bytes, max_object)
    model = Model(max_bytes, max_object)
    for op in ops:
        kind = op[0]
        if kind == "put":
            _, key, variant, body_len, tags = op
            assert isinstance(key, bytes)
            assert isinstance(body_len, int)
            assert isinstance(tags, frozenset)
            s = stored(variant if isinstance(variant, bytes) else None, tags)
            body = b"x" * body_len
            entry = store.put(key, s, body)
            assert (entry is not None) == model.put((key, s.vary_key[0]), entry_size(s, body), tags)
        elif kind == "touch":
            _, key, variant = op
            assert isinstance(key, bytes)
            found = (store.variants(key) or {}).get((variant if isinstance(variant, bytes) else None,))
            if found is not None:
                store.touch(found)
                model.lru.move_to_end((key, found.variant[0]))
        elif kind == "purge":
            key = op[1]
            assert isinstance(key, bytes)
            assert store.purge(key) == model.purge(key)
        elif kind == "prefix":
            prefix = op[1]
            assert isinstance(prefix, bytes)
            assert store.ban_prefix(prefix) == model.ban_prefix(prefix)
        else:
            tag = op[1]
            assert isinstance(tag, bytes)
            assert store.ban_tag(tag) == model.ban_tag(tag)
        assert store.bytes_held <= store.max_bytes
        assert store.bytes_held == sum(e.size for e in store)
        assert held(store) == list(model.lru)
        assert store.evictions == model.evictions
        assert len(store) == len(model.lru)
