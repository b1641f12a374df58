"""The cache's shared store in Redis (``distpat cache --store redis://...``): the commands and the
readers of their replies, so that several cache processes share what each fetched.

Pure, like :mod:`distpat.core.limiter_shared`: this module builds each command (a tuple of
bytes, one :class:`~distpat.core.stage.Call`: one round trip) and reads its reply as RESP2
values (bytes, int, None, lists); the engine carries the calls out. Every reader checks the
reply's shape and raises :class:`~distpat.errors.CacheStoreError` with a message otherwise.

**Layout.** One Redis hash per URL, :data:`KEY_PREFIX` + the primary key (the request's host
and target, as :class:`~distpat.core.cache_stage.CacheStage` forms it); within it one field per
Vary variant, :func:`variant_field` of the variant key (RFC 9111 section 4.1), whose value is
:func:`~distpat.core.cache_codec.encode_entry`'s. A tag (``Cache-Tag`` / ``Surrogate-Key``) is
a set, :data:`TAG_PREFIX` + the tag, of the hash keys whose entries carry it.

**Lifetime.** A hash expires when none of its entries may still be used: :func:`ttl_ms` is an
entry's remaining freshness (RFC 9111 section 4.2) plus the longest window it may then still
serve or be validated in: ``stale-while-revalidate``, ``stale-if-error`` (RFC 5861) or, for an
entry with a validator, :data:`KEEP` seconds to be revalidated (section 4.3); at least a second.
Storing sets a key's TTL to the larger of its current one and the entry's, so a hash lives as
long as its longest-lived entry (a key found without a TTL is given one). A tag set follows the
same rule. Redis's own eviction (``maxmemory-policy``) bounds memory; this module adds no bound.

**Scripts.** Storing, purging and banning are Lua scripts, atomic in Redis: the first call is
``EVALSHA``; on ``NOSCRIPT`` (a server restarted or flushed, :func:`needs_load`) the caller sends
the same command built with ``load=True``, an ``EVAL`` with the script's text, which loads it.

* :func:`store_command`: ``HSET`` the variant, extend the hash's TTL, ``SADD`` the hash to each
  tag's set and extend the set's TTL; answers the hash's TTL after (:func:`read_store`).
* :func:`purge_command`: the URL's variant count (``HLEN``), then ``DEL`` (:func:`read_count`).
* :func:`ban_tag_command`: every hash in the tag's set, counted and deleted, then the set. A tag
  names hashes, not fields: banning it removes every variant of a URL any variant of which
  carried the tag (coarser than :class:`~distpat.core.cache_store.MemoryStore`, which removes
  only the tagged variants). Members outside :data:`KEY_PREFIX` are left alone.
* :func:`ban_prefix_command`: ``SCAN MATCH`` of the prefix escaped for Redis's glob (``*``,
  ``?``, ``[``, ``]``, ``\\``: a URL with ``*`` in it bans nothing else), each hash counted and
  deleted. **O(keys in the database)**, in one script: Redis serves nothing else meanwhile; use
  it sparingly on a large store, or prefer tags.
"""

from __future__ import annotations

import hashlib
import math
import re

from distpat.core.cache_codec import decode_entry, encode_entry, encode_optional_bytes, encode_uint
from distpat.core.cache_policy import Stored, current_age
from distpat.errors import CacheStoreError

__all__ = [
    "BAN_PREFIX_SCRIPT",
    "BAN_TAG_SCRIPT",
    "KEEP",
    "KEY_PREFIX",
    "PURGE_SCRIPT",
    "SCAN_COUNT",
    "STORE_SCRIPT",
    "TAG_PREFIX",
    "ban_prefix_command",
    "ban_tag_command",
    "glob_escape",
    "hash_key",
    "lookup_command",
    "needs_load",
    "purge_command",
    "read_count",
    "read_lookup",
    "read_store",
    "store_command",
    "tag_key",
    "ttl_ms",
    "variant_field",
]

KEY_PREFIX = b"distpat:cache:"
TAG_PREFIX = b"distpat:cache-tag:"
KEEP = 3600
"""Seconds an entry with a validator is kept past its freshness, to be revalidated (section 4.3)."""
SCAN_COUNT = 1000
"""The ``COUNT`` hint of each ``SCAN`` step of a prefix ban."""

STORE_SCRIPT = b"""\
-- distpat's shared cache (src/distpat/core/cache_redis.py): store one variant of a URL.
-- KEYS[1]: the URL's hash; KEYS[2..]: the sets of the entry's tags.
-- ARGV[1]: the variant's field; ARGV[2]: the encoded entry; ARGV[3]: the entry's TTL (ms).
-- Every key's TTL becomes max(its TTL, ARGV[3]). Returns the hash's TTL (ms) after.
local ttl = tonumber(ARGV[3])
local function extend(key)
  local current = redis.call('PTTL', key)
  if current < ttl then redis.call('PEXPIRE', key, ttl) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
extend(KEYS[1])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  extend(KEYS[i])
end
return redis.call('PTTL', KEYS[1])
"""

PURGE_SCRIPT = b"""\
-- distpat's shared cache: remove every variant of a URL. KEYS[1]: its hash. Returns how many went.
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"""

BAN_TAG_SCRIPT = b"""\
-- distpat's shared cache: remove every URL a tag names. KEYS[1]: the tag's set; ARGV[1]: the
-- prefix of the cache's hashes (other members are left alone). Returns how many variants went.
local prefix = ARGV[1]
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(key, 1, #prefix) == prefix and redis.call('TYPE', key).ok == 'hash' then
    n = n + redis.call('HLEN', key)
    redis.call('DEL', key)
  end
end
redis.call('DEL', KEYS[1])
return n
"""

BAN_PREFIX_SCRIPT = b"""\
-- distpat's shared cache: remove every URL whose hash key matches a glob (O(keys): SCAN).
-- ARGV[1]: the glob (the prefix escaped, then *); ARGV[2]: SCAN's COUNT. Returns how many variants went.
redis.replicate_commands()
local cursor = '0'
local n = 0
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', ARGV[2])
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    if redis.call('TYPE', key).ok == 'hash' then
      n = n + redis.call('HLEN', key)
      redis.call('DEL', key)
    end
  end
until cursor == '0'
return n
"""


def _sha(script: bytes) -> bytes:
    return hashlib.sha1(script).hexdigest().encode("ascii")  # Redis names scripts by SHA-1


_SHAS = {script: _sha(script) for script in (STORE_SCRIPT, PURGE_SCRIPT, BAN_TAG_SCRIPT, BAN_PREFIX_SCRIPT)}


def _script(script: bytes, keys: tuple[bytes, ...], args: tuple[bytes, ...], load: bool) -> tuple[bytes, ...]:
    head = (b"EVAL", script) if load else (b"EVALSHA", _SHAS[script])
    return (*head, b"%d" % len(keys), *keys, *args)


def needs_load(error: str | None) -> bool:
    """Whether a script call's error reply asks for the ``load=True`` command (``NOSCRIPT``)."""
    return error is not None and error.startswith("NOSCRIPT")


def hash_key(key: bytes) -> bytes:
    """The Redis key of the hash holding the variants of primary key ``key`` (host + target)."""
    return KEY_PREFIX + key


def tag_key(tag: bytes) -> bytes:
    """The Redis key of the set naming the hashes tagged ``tag``."""
    return TAG_PREFIX + tag


def variant_field(vary_key: tuple[bytes | None, ...]) -> bytes:
    """The hash field of one variant: its key's count, then each value (length + 1, or 0 for a
    field the request did not send), so that no two variant keys share a field."""
    return encode_uint(len(vary_key)) + b"".join(encode_optional_bytes(v) for v in vary_key)


_GLOB = re.compile(rb"([*?\[\]\\])")


def glob_escape(text: bytes) -> bytes:
    """``text`` matching itself only in a Redis glob pattern (``KEYS``, ``SCAN MATCH``)."""
    return _GLOB.sub(rb"\\\1", text)


def ttl_ms(stored: Stored, now: float) -> int:
    """How long (ms) ``stored`` may still be used at ``now`` (Unix seconds): the rest of its
    freshness lifetime, plus the longest of its ``stale-while-revalidate`` and ``stale-if-error``
    windows and, with a validator, :data:`KEEP`; never less than 1000."""
    d = stored.directives
    window = max(
        d.stale_while_revalidate or 0,
        d.stale_if_error or 0,
        KEEP if stored.validatable else 0,
    )
    seconds = stored.lifetime - current_age(stored, now) + window
    return max(1000, math.ceil(seconds * 1000))


def lookup_command(key: bytes) -> tuple[bytes, ...]:
    """Every variant stored for primary key ``key``: ``HGETALL`` (read by :func:`read_lookup`)."""
    return (b"HGETALL", hash_key(key))


def read_lookup(reply: object) -> tuple[list[tuple[Stored, bytes]], int]:
    """The entries (stored response, body) an ``HGETALL`` answered, and how many of its fields
    were corrupt (not decodable, or under a field that is not their variant's): skipped."""
    if not isinstance(reply, list) or len(reply) % 2:
        raise CacheStoreError(f"HGETALL answered {reply!r:.80}, not a list of fields and values")
    entries: list[tuple[Stored, bytes]] = []
    corrupt = 0
    for i in range(0, len(reply), 2):
        field, value = reply[i], reply[i + 1]
        if not isinstance(field, bytes) or not isinstance(value, bytes):
            raise CacheStoreError(f"HGETALL answered {field!r:.40} {value!r:.40}, not two strings")
        try:
            stored, body = decode_entry(value)
        except CacheStoreError:
            corrupt += 1
            continue
        if variant_field(stored.vary_key) != field:
            corrupt += 1
            continue
        entries.append((stored, body))
    return entries, corrupt


def store_command(
    key: bytes, stored: Stored, body: bytes, ttl_ms: int, *, load: bool = False
) -> tuple[bytes, ...]:
    """Store ``stored`` and ``body`` as its variant of primary key ``key``, every key's TTL at
    least ``ttl_ms`` (see :func:`ttl_ms`), in one script call (read by :func:`read_store`).
    :class:`~distpat.errors.CacheStoreError` when the entry cannot be encoded or ``ttl_ms`` < 1."""
    if ttl_ms < 1:
        raise CacheStoreError(f"a cache entry's TTL must be at least 1 ms, not {ttl_ms}")
    keys = (hash_key(key), *(tag_key(tag) for tag in sorted(stored.tags)))
    args = (variant_field(stored.vary_key), encode_entry(stored, body), b"%d" % ttl_ms)
    return _script(STORE_SCRIPT, keys, args, load)


def purge_command(key: bytes, *, load: bool = False) -> tuple[bytes, ...]:
    """Remove every variant of primary key ``key``; the reply (:func:`read_count`) is how many."""
    return _script(PURGE_SCRIPT, (hash_key(key),), (), load)


def ban_tag_command(tag: bytes, *, load: bool = False) -> tuple[bytes, ...]:
    """Remove every URL tagged ``tag`` (all its variants); the reply is how many variants went."""
    return _script(BAN_TAG_SCRIPT, (tag_key(tag),), (KEY_PREFIX,), load)


def ban_prefix_command(prefix: bytes, *, load: bool = False) -> tuple[bytes, ...]:
    """Remove every URL whose primary key starts with ``prefix``; the reply is how many variants
    went. O(keys in the database): the script scans them all."""
    pattern = glob_escape(KEY_PREFIX + prefix) + b"*"
    return _script(BAN_PREFIX_SCRIPT, (), (pattern, b"%d" % SCAN_COUNT), load)


def read_store(reply: object) -> int:
    """The hash's TTL (ms) :func:`store_command`'s script answered."""
    if not isinstance(reply, int) or isinstance(reply, bool) or reply < 1:
        raise CacheStoreError(f"the cache's store script answered {reply!r:.80}, not a TTL")
    return reply


def read_count(reply: object) -> int:
    """How many variants a purge or a ban removed."""
    if not isinstance(reply, int) or isinstance(reply, bool) or reply < 0:
        raise CacheStoreError(f"the cache's purge script answered {reply!r:.80}, not a count")
    return reply
