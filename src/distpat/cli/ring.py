"""``distpat ring``: look up where keys land, and see how evenly a ring spreads them."""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

from distpat.cli.flags import log_flags, logging_from_flags
from distpat.config.twemproxy import load_twemproxy
from distpat.errors import ConfigError, RingError
from distpat.ring import ALGORITHMS, DEFAULT_VNODES, TWEMPROXY_HASHES, Ring, from_twemproxy, make_ring

__all__ = ["register", "parse_nodes"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ring = sub.add_parser(
        "ring",
        help="consistent-hashing rings: locate keys, show balance and movement",
        description="Consistent-hashing rings: locate keys, show balance and movement.",
    )
    commands = ring.add_subparsers(dest="ring_command", metavar="COMMAND", required=True)

    locate = commands.add_parser(
        "locate",
        help="print KEY<TAB>SERVER for each key",
        description=(
            "Print KEY<TAB>SERVER for each key given, or for each line of standard input when "
            "none are. With --twemproxy-config, SERVER is the server's name in the file, or "
            "host:port when it has none, and placement is nutcracker's."
        ),
    )
    _add_source(locate)
    log_flags(locate)
    locate.add_argument(
        "keys", nargs="*", metavar="KEY", help="keys to place (default: read lines from stdin)"
    )
    locate.set_defaults(run=_locate)

    stats = commands.add_parser(
        "stats",
        help="each node's share as a bar chart, and the keys a membership change moves",
        description=(
            "Show each node's share of the keys as a bar chart and, given --add, --remove or "
            "--reweight, the fraction of keys that move and where they go."
        ),
    )
    _add_source(stats)
    log_flags(stats)
    stats.add_argument(
        "--keys",
        type=int,
        default=100_000,
        metavar="N",
        help="how many sample keys 'key:0' .. 'key:N-1' to place (default 100000)",
    )
    stats.add_argument(
        "--add", action="append", default=[], metavar="NODE[=WEIGHT]", help="add a node (repeatable)"
    )
    stats.add_argument(
        "--remove", action="append", default=[], metavar="NODE", help="remove a node (repeatable)"
    )
    stats.add_argument(
        "--reweight",
        action="append",
        default=[],
        metavar="NODE=WEIGHT",
        help="change a node's weight (repeatable)",
    )
    stats.add_argument(
        "--width", type=int, default=40, metavar="COLUMNS", help="bar width, 1 to 500 (default 40)"
    )
    stats.set_defaults(run=_stats)


def _add_source(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("ring source (one of)")
    src.add_argument("--twemproxy-config", metavar="FILE", help="a twemproxy (nutcracker) YAML file")
    src.add_argument("--nodes", metavar="A,B,...", help="node names, each optionally NAME=WEIGHT")
    opts = p.add_argument_group("ring options")
    opts.add_argument(
        "--pool", metavar="NAME", help="the pool in --twemproxy-config (needed if it has several)"
    )
    opts.add_argument(
        "--algorithm",
        choices=list(ALGORITHMS),
        default="hashring",
        help="placement algorithm for --nodes (default hashring)",
    )
    opts.add_argument(
        "--vnodes",
        type=int,
        default=None,
        metavar="N",
        help=f"hashring: points per unit of weight (default {DEFAULT_VNODES})",
    )
    opts.add_argument(
        "--hash",
        choices=list(TWEMPROXY_HASHES),
        default=None,
        help="ketama/modula: twemproxy key hash (default fnv1a_64)",
    )
    opts.add_argument(
        "--hash-tag", metavar="XY", default=None, help="ketama/modula: two-character hash tag, e.g. {}"
    )


# -- building the ring -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    ring: Ring
    labels: Mapping[str, str]  # ring node name -> what to print


def parse_nodes(spec: str) -> dict[str, float]:
    """``"a,b=2,c"`` -> ``{"a": 1, "b": 2, "c": 1}``; raises :class:`RingError` on bad input."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, weight = part.strip().partition("=")
        name = name.strip()
        if not name:
            raise RingError(f"--nodes {spec!r}: empty node name")
        if name in out:
            raise RingError(f"--nodes {spec!r}: duplicate node name {name!r}")
        out[name] = _number(weight, f"--nodes {spec!r}: weight of {name!r}") if sep else 1
    return out


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RingError(f"{what} must be a number, not {text!r}") from None
    return int(value) if value.is_integer() else value


def _source(args: argparse.Namespace) -> _Source:
    if bool(args.twemproxy_config) == bool(args.nodes):
        raise ConfigError("give exactly one of --twemproxy-config FILE or --nodes A,B,...")
    if args.twemproxy_config:
        for flag, value in (("--vnodes", args.vnodes), ("--hash", args.hash), ("--hash-tag", args.hash_tag)):
            if value is not None:
                raise ConfigError(f"{flag} applies to --nodes; a twemproxy pool sets its own")
        if args.algorithm != "hashring":
            raise ConfigError("--algorithm applies to --nodes; a twemproxy pool sets its own distribution")
        pools = load_twemproxy(args.twemproxy_config)
        if args.pool is None:
            if len(pools) != 1:
                raise ConfigError(
                    f"{args.twemproxy_config} has {len(pools)} pools ({', '.join(pools)}); "
                    "choose one with --pool"
                )
            pool = next(iter(pools.values()))
        elif args.pool not in pools:
            raise ConfigError(
                f"{args.twemproxy_config} has no pool {args.pool!r}; its pools: {', '.join(pools) or 'none'}"
            )
        else:
            pool = pools[args.pool]
        if pool.distribution == "random":
            print(
                "distpat: note: distribution 'random' ignores the key; servers below are random draws",
                file=sys.stderr,
            )
        return _Source(
            from_twemproxy(pool, draw=partial(random.getrandbits, 32)),
            {s.ring_name: s.label for s in pool.servers},
        )
    if args.pool is not None:
        raise ConfigError("--pool applies to --twemproxy-config")
    nodes = parse_nodes(args.nodes)
    options: dict[str, object] = {}
    if args.vnodes is not None:
        if args.algorithm != "hashring":
            raise RingError("--vnodes applies to --algorithm hashring only")
        options["vnodes"] = args.vnodes
    for flag, value in (("hash", args.hash), ("hash_tag", args.hash_tag)):
        if value is not None:
            if args.algorithm not in ("ketama", "modula"):
                raise RingError(f"--{flag.replace('_', '-')} applies to --algorithm ketama or modula only")
            options[flag] = value
    ring = make_ring(args.algorithm, nodes, **options)
    return _Source(ring, {name: name for name in nodes})


# -- locate ------------------------------------------------------------------------


def _stdin_keys() -> Iterator[bytes]:
    # Keys are bytes, as a proxy sees them: any byte sequence is a key, UTF-8 or not.
    for line in sys.stdin.buffer:
        yield line.removesuffix(b"\n").removesuffix(b"\r")


def _locate(args: argparse.Namespace) -> int:
    logging_from_flags(args)
    source = _source(args)
    keys: Iterable[bytes] = [os.fsencode(k) for k in args.keys] if args.keys else _stdin_keys()
    get, out = source.ring.get_node, sys.stdout.buffer
    labels = {name: label.encode("utf-8", "backslashreplace") for name, label in source.labels.items()}
    for key in keys:
        out.write(key + b"\t" + labels[get(key)] + b"\n")
    out.flush()
    return 0


# -- stats --------------------------------------------------------------------------

_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(fraction: float, width: int) -> str:
    eighths = round(max(0.0, min(fraction, 1.0)) * width * 8)
    full, part = divmod(eighths, 8)
    try:
        "█".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):  # a terminal without block glyphs: plain ASCII bars
        return ("#" * round(eighths / 8)).ljust(width)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def _counts(ring: Ring, keys: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(ring.nodes, 0)
    for node in map(ring.get_node, keys):
        counts[node] += 1
    return counts


def _stats(args: argparse.Namespace) -> int:
    logging_from_flags(args)
    if args.keys < 1 or args.keys > 10_000_000:
        raise RingError(f"--keys must be from 1 to 10000000, not {args.keys}")
    if not 1 <= args.width <= 500:
        raise RingError(f"--width must be from 1 to 500, not {args.width}")
    source = _source(args)
    ring, labels = source.ring, dict(source.labels)
    keys = [f"key:{i}" for i in range(args.keys)]
    counts = _counts(ring, keys)
    _print_chart(ring, counts, labels, len(keys), args.width)
    if not (args.add or args.remove or args.reweight):
        return 0

    changed = ring
    for spec in args.add:
        name, _, w = spec.partition("=")
        changed = changed.add(name, _number(w, f"--add {spec!r}: weight") if w else 1)
        labels.setdefault(name, name)
    for name in args.remove:
        changed = changed.remove(name)
    for spec in args.reweight:
        name, sep, w = spec.partition("=")
        if not sep:
            raise RingError(f"--reweight wants NODE=WEIGHT, not {spec!r}")
        changed = changed.reweight(name, _number(w, f"--reweight {spec!r}: weight"))
    before = list(map(ring.get_node, keys))
    after = list(map(changed.get_node, keys))
    moves: dict[tuple[str, str], int] = {}
    for a, b in zip(before, after, strict=False):
        if a != b:
            moves[a, b] = moves.get((a, b), 0) + 1
    moved = sum(moves.values())
    print()
    print(f"after the change ({len(changed)} nodes):")
    _print_chart(changed, _counts(changed, keys), labels, len(keys), args.width)
    print()
    print(f"keys moved: {moved} of {len(keys)} ({moved / len(keys):.2%})")
    into: dict[str, int] = {}
    for (_, b), n in moves.items():
        into[b] = into.get(b, 0) + n
    for name, n in sorted(into.items(), key=lambda kv: -kv[1]):
        print(f"  to {labels.get(name, name)}: {n} ({n / len(keys):.2%} of all keys)")
    return 0


def _print_chart(
    ring: Ring, counts: Mapping[str, int], labels: Mapping[str, str], total: int, width: int
) -> None:
    mean = total / len(ring)
    peak = max(counts.values())
    widest = max(len(labels.get(n, n)) for n in counts)
    print(f"{type(ring).__name__}: {len(ring)} nodes, {total} keys, peak/mean {peak / mean:.3f}")
    for name, n in counts.items():
        share = n / total
        print(
            f"  {labels.get(name, name):<{widest}}  {_bar(n / peak if peak else 0, width)} {share:7.2%}  {n}"
        )
