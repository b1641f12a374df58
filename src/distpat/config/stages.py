"""The kinds of stage a TOML pipeline names (``[[stage]] kind = "split"``), by name.

Each kind lives in its own module, which registers a builder when imported::

    register("split", build_split_stage, keys=("variants", "key", ...), summary="...")

The builder gets one ``[[stage]]`` table as a :class:`StageTable` (its keys beside ``kind`` and
``name``, and the file's pools) and returns the :class:`~distpat.core.stage.Stage`; it reports
a bad value with :meth:`StageTable.error`, so every message names the file, the table and the
key. Unknown keys are refused before the builder runs (with the closest known one suggested).
The kinds distpat ships are imported at the bottom of this module, one line each.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distpat.config.options import Option, read_toml_value
from distpat.core.stage import Stage
from distpat.errors import ConfigError

__all__ = ["STAGE_KINDS", "StageKind", "StageTable", "build_stage", "register"]


@dataclass(frozen=True, slots=True)
class StageTable:
    """One ``[[stage]]`` table of a pipeline file, as a kind's builder reads it."""

    source: str
    """The file it came from."""
    index: int
    """Its position among the file's ``[[stage]]`` tables, from 1."""
    kind: str
    name: str
    """``name = ...``, or empty (the pipeline then names it ``KIND-INDEX``)."""
    values: Mapping[str, Any]
    """Its keys beside ``kind`` and ``name``, as read from the TOML."""
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The file's pools (``[pools.NAME]``): name and upstream URLs."""
    added: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Pools the stage brings itself (:meth:`add_pool`: a scatter stage's shards given as URLs),
    added to the file's by the loader."""

    @property
    def where(self) -> str:
        named = f", name = {self.name!r}" if self.name else ""
        return f"{self.source}: [[stage]] {self.index} (kind = {self.kind!r}{named})"

    def error(self, key: str | None, message: str) -> ConfigError:
        """A ConfigError naming the file, this table and ``key`` (None: the table as a whole)."""
        return ConfigError(f"{self.where}{'' if key is None else f', key {key!r}'}: {message}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def text(self, key: str, default: str | None = None) -> str | None:
        """A string value (or ``default`` when the key is absent)."""
        value = self.values.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_shown(value)}")
        return value

    def option(self, option: Option, key: str | None = None) -> Any:
        """The value of ``key`` (``option.name`` by default) read as the option tables read their
        TOML values (types checked; sizes, durations, choices), or the option's default when absent."""
        key = option.name if key is None else key
        if key not in self.values:
            return option.default
        return read_toml_value(option, self.values[key], f"{self.where}, key {key!r}")

    def add_pool(self, key: str, name: str, urls: tuple[str, ...]) -> str:
        """A pool of this stage's own, named ``name``, of ``urls``; refused when the name is taken."""
        if name in self.pools or name in self.added:
            raise self.error(key, f"the pool {name!r} this stage makes is defined already: rename the stage")
        self.added[name] = urls
        return name

    def pool(self, key: str, name: object) -> str:
        """``name`` as one of the file's pools."""
        if not isinstance(name, str):
            raise self.error(key, f"must name a pool (a string), not {_shown(name)}")
        if name not in self.pools:
            known = ", ".join(sorted(self.pools)) or "none"
            raise self.error(key, f"no pool {name!r}: add a [pools.{name}] table (pools defined: {known})")
        return name


@dataclass(frozen=True, slots=True)
class StageKind:
    """How one kind of stage is made from its table."""

    build: Callable[[StageTable], Stage]
    keys: tuple[str, ...]
    """The keys its table may have beside ``kind`` and ``name``."""
    summary: str = ""


STAGE_KINDS: dict[str, StageKind] = {}
"""Every kind a ``[[stage]]`` table may name, by name."""


def register(
    kind: str, build: Callable[[StageTable], Stage], *, keys: Iterable[str], summary: str = ""
) -> StageKind:
    """Make ``kind`` available to pipeline files; a kind registered twice is a programming error."""
    if kind in STAGE_KINDS and STAGE_KINDS[kind].build is not build:
        raise ValueError(f"stage kind {kind!r} is registered already")
    entry = StageKind(build, tuple(keys), summary)
    STAGE_KINDS[kind] = entry
    return entry


def build_stage(table: StageTable) -> Stage:
    """The stage of one ``[[stage]]`` table: its kind looked up, its keys checked, then built."""
    entry = STAGE_KINDS.get(table.kind)
    if entry is None:
        known = ", ".join(sorted(STAGE_KINDS)) or "none"
        hint = difflib.get_close_matches(table.kind, sorted(STAGE_KINDS), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise table.error("kind", f"no stage kind {table.kind!r}{suggestion}; the kinds are: {known}")
    for key in table.values:
        if key not in entry.keys:
            hint = difflib.get_close_matches(key.replace("-", "_"), entry.keys, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise table.error(
                key, f"unknown key{suggestion}; a {table.kind} stage takes: {', '.join(entry.keys)}"
            )
    try:
        stage = entry.build(table)
    except ConfigError as exc:
        if str(exc).startswith(table.source):
            raise
        raise table.error(None, str(exc)) from None
    if table.name:
        stage.name = table.name
    return stage


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


# The kinds distpat ships: each module registers its own when imported.
import distpat.config.cache  # noqa: E402  "cache"
import distpat.config.ratelimit  # noqa: E402  "ratelimit"
import distpat.config.scatter  # noqa: E402  "scatter"
import distpat.config.shard  # noqa: E402  "shard"
import distpat.config.split  # noqa: E402, F401  "split"
