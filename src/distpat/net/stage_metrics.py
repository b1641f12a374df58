"""The pipeline stages' own samples (:meth:`Stage.stats <distpat.core.stage.Stage.stats>`) as
Prometheus metric families, built when /metrics is scraped.

Every stage reports :class:`~distpat.core.stage.Stat` samples; they are grouped into one family
per name, in the order the names are first seen. A counter's family is exposed as
prometheus_client exposes its own counters: the samples named ``NAME_total``. A scrape never
fails because of a stage: a name seen again with another kind or help keeps the first (the other
samples are left out), as is a sample whose label set was given already, or whose name, label
names or value cannot be exposed. A ``"histogram"`` stat names its sample in full
(``NAME_bucket`` with an ``le`` label, ``NAME_sum``, ``NAME_count``): its family is ``NAME``.
A stage whose ``stats()`` raises is left out of that scrape
(and logged once).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

from prometheus_client.core import Metric

from distpat.core.stage import Stage, Stat

__all__ = ["stage_families"]

log = logging.getLogger("distpat.proxy")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_KINDS = ("counter", "gauge", "histogram")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_failed: set[str] = set()  # stages whose stats() raised, logged once each


def _exposable(stat: Stat) -> bool:
    if stat.kind not in _KINDS or not isinstance(stat.name, str) or not _NAME.match(stat.name):
        return False
    if isinstance(stat.value, bool) or not isinstance(stat.value, (int, float)) or math.isnan(stat.value):
        return False
    return all(
        isinstance(label, str) and _LABEL.match(label) and not label.startswith("__") and isinstance(v, str)
        for label, v in stat.labels
    )


def _family(stat: Stat) -> str | None:
    """The family a sample belongs to (None: a histogram sample without its suffix)."""
    if stat.kind == "counter":
        return stat.name.removesuffix("_total")
    if stat.kind == "histogram":
        suffix = next((s for s in _HISTOGRAM_SUFFIXES if stat.name.endswith(s)), None)
        return None if suffix is None else stat.name.removesuffix(suffix)
    return stat.name


def _samples(stages: Iterable[Stage]) -> Iterable[Stat]:
    for stage in stages:
        try:
            stats = stage.stats()
        except Exception:  # a stage's bug costs its own samples, never the scrape
            name = stage.name or stage.kind
            if name not in _failed:
                _failed.add(name)
                log.exception("stage %r: stats() failed; its samples are left out of /metrics", name)
            continue
        yield from stats


def stage_families(stages: Iterable[Stage]) -> list[Metric]:
    """One metric family per sample name of ``stages`` (see the module's docstring)."""
    families: dict[str, Metric] = {}
    seen: dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
    for stat in _samples(stages):
        if not isinstance(stat, Stat) or not _exposable(stat):
            continue
        base = _family(stat)
        if base is None:
            continue
        family = families.get(base)
        if family is None:
            family = families[base] = Metric(base, str(stat.help), stat.kind)
            seen[base] = set()
        elif family.type != stat.kind or family.documentation != stat.help:
            continue  # the first kind and help stand
        labels = tuple(sorted(stat.labels))
        if (stat.name, labels) in seen[base] or len({label for label, _ in labels}) != len(labels):
            continue
        seen[base].add((stat.name, labels))
        sample = base + "_total" if stat.kind == "counter" else stat.name
        family.add_sample(sample, dict(stat.labels), float(stat.value))
    return list(families.values())
