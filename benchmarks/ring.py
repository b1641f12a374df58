"""Consistent-hashing benchmark: distpat's rings against uhashring, in one run.

Every contender is timed in every round, in rotating order, and the medians
over rounds are compared, so that a burst of load on this shared machine
lands on all of them alike. Run:

    python benchmarks/ring.py            # full run (about a minute)
    python benchmarks/ring.py --quick    # fewer rounds and keys

Prints the machine, ns per lookup and ratios, balance and movement figures,
and the cost of building a 1000-node ring and changing it by one node.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import mmh3
from uhashring import HashRing as UHashRing

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _machine import describe
from distpat.ring import HashRing, JumpRing, KetamaRing, MaglevRing, RendezvousRing


def per_call_ns(fn: Callable[[str], object], keys: list[str]) -> float:
    """Nanoseconds per call of ``fn`` over ``keys``, the loop's own cost included (as for every contender)."""
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for k in keys:
            fn(k)
        return (time.perf_counter_ns() - t0) / len(keys)
    finally:
        gc.enable()


def rounds(contenders: dict[str, Callable[[], float]], n: int) -> dict[str, float]:
    """Median of ``n`` rounds; each round runs every contender once, the order rotating."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(n):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            results[name].append(contenders[name]())
    return {name: statistics.median(v) for name, v in results.items()}


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def lookups(args: argparse.Namespace) -> None:
    nodes = [f"node{i}" for i in range(10)]
    keys = [f"user:{i}" for i in range(args.keys)]
    ring = HashRing(nodes)
    ketama = KetamaRing(dict.fromkeys(nodes, 1), hash="md5")
    uh = UHashRing(nodes=nodes)
    uk = UHashRing(nodes=nodes, hash_fn="ketama")
    ceiling = {k: ring.get_node(k) for k in keys}
    maglev, hrw, jump = MaglevRing(nodes), RendezvousRing(nodes), JumpRing(nodes)

    mismatches = sum(1 for k in keys if ketama.get_node(k) != uk.get_node(k))
    contenders = {
        "mmh3.hash alone": lambda: per_call_ns(mmh3.hash, keys),
        "dict of precomputed key->node": lambda: per_call_ns(ceiling.__getitem__, keys),
        "distpat HashRing": lambda: per_call_ns(ring.get_node, keys),
        "uhashring default": lambda: per_call_ns(uh.get_node, keys),
        "distpat KetamaRing md5": lambda: per_call_ns(ketama.get_node, keys),
        "uhashring ketama": lambda: per_call_ns(uk.get_node, keys),
        "distpat MaglevRing": lambda: per_call_ns(maglev.get_node, keys),
        "distpat RendezvousRing": lambda: per_call_ns(hrw.get_node, keys),
        "distpat JumpRing": lambda: per_call_ns(jump.get_node, keys),
    }
    med = rounds(contenders, args.rounds)
    print(
        f"\n## Single-key lookups: 10 nodes, {len(keys):,} distinct keys 'user:{{i}}', "
        f"median of {args.rounds} alternating rounds"
    )
    print(f"{'contender':34s} {'ns/lookup':>10s}")
    for name, ns in med.items():
        print(f"{name:34s} {ns:10.0f}")
    r1 = med["uhashring default"] / med["distpat HashRing"]
    r2 = med["uhashring ketama"] / med["distpat KetamaRing md5"]
    print(f"HashRing vs uhashring default:        {r1:5.1f}x faster (goal >= 8x: {verdict(r1 >= 8)})")
    print(f"KetamaRing md5 vs uhashring ketama:   {r2:5.1f}x faster (goal >= 3x: {verdict(r2 >= 3)})")
    print(
        f"KetamaRing md5 vs uhashring ketama placement: {mismatches} of {len(keys):,} keys differ "
        f"(goal 0: {verdict(mismatches == 0)})"
    )
    print(
        "HashRing vs the dict ceiling:         "
        f"{med['distpat HashRing'] / med['dict of precomputed key->node']:5.2f}x the cost"
    )


def balance(args: argparse.Namespace) -> None:
    nodes = [f"node{i}" for i in range(10)]
    keys = [f"user:{i}" for i in range(args.balance_keys)]
    ring = HashRing(nodes)
    before = [ring.get_node(k) for k in keys]
    counts = Counter(before)
    peak = max(counts.values()) / (len(keys) / len(nodes))
    grown = ring.add("node10")
    after_add = [grown.get_node(k) for k in keys]
    moved = [(a, b) for a, b in zip(before, after_add, strict=False) if a != b]
    to_new = sum(1 for _, b in moved if b == "node10")
    shrunk = ring.remove("node3")
    after_rm = [shrunk.get_node(k) for k in keys]
    moved_rm = [(a, b) for a, b in zip(before, after_rm, strict=False) if a != b]
    from_gone = sum(1 for a, _ in moved_rm if a == "node3")
    shares = ring.shares().values()
    print(
        f"\n## Balance and movement: default HashRing ({ring.vnodes} points a node), 10 nodes, "
        f"{len(keys):,} keys"
    )
    print(
        f"peak/mean load: {peak:.3f} (goal <= 1.10: {verdict(peak <= 1.10)}); "
        f"exact shares {min(shares) * 10:.3f} .. {max(shares) * 10:.3f} of the mean"
    )
    frac = len(moved) / len(keys)
    print(
        f"add an 11th node: {frac:.4f} of keys move ({frac * 11:.3f}/11; goal <= 1.3/11: "
        f"{verdict(frac <= 1.3 / 11)}), {to_new} of {len(moved)} to the new node "
        f"({verdict(to_new == len(moved))})"
    )
    print(
        f"remove node3: {len(moved_rm) / len(keys):.4f} of keys move; {from_gone} of {len(moved_rm)} "
        f"were node3's (it held {counts['node3']}) ({verdict(from_gone == len(moved_rm) == counts['node3'])})"
    )


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def big_ring(args: argparse.Namespace) -> None:
    print(
        "\n## A 1000-node ring: build, and add or remove one node, at equal points per node "
        f"(median of {args.big_rounds} alternating rounds)"
    )
    for points in (160, 1024):  # uhashring's default, and distpat's
        big_ring_at(points, args)


def big_ring_at(points: int, args: argparse.Namespace) -> None:
    nodes = [f"node{i}" for i in range(1000)]
    ours = HashRing(nodes, vnodes=points)
    theirs = UHashRing(nodes=nodes, vnodes=points)
    counter = iter(range(10**9))

    def ours_build() -> float:
        return timed(lambda: HashRing(nodes, vnodes=points))

    def theirs_build() -> float:
        return timed(lambda: UHashRing(nodes=nodes, vnodes=points))

    def ours_add() -> float:
        name = f"extra{next(counter)}"
        return timed(lambda: ours.add(name))

    def ours_remove() -> float:
        return timed(lambda: ours.remove("node500"))

    def theirs_add() -> float:
        name = f"extra{next(counter)}"
        t = timed(lambda: theirs.add_node(name))
        theirs.remove_node(name)  # uhashring changes in place: undo, untimed
        return t

    def theirs_remove() -> float:
        t = timed(lambda: theirs.remove_node("node500"))
        theirs.add_node("node500")
        return t

    med = rounds(
        {
            "distpat HashRing build": ours_build,
            "uhashring build": theirs_build,
            "distpat add": ours_add,
            "uhashring add_node": theirs_add,
            "distpat remove": ours_remove,
            "uhashring remove_node": theirs_remove,
        },
        args.big_rounds,
    )
    print(f"{points} points per node ({len(nodes) * points:,} points):")
    for name, sec in med.items():
        print(f"  {name:28s} {sec * 1e3:10.2f} ms")
    add = med["uhashring add_node"] / med["distpat add"]
    rm = med["uhashring remove_node"] / med["distpat remove"]
    build = med["uhashring build"] / med["distpat HashRing build"]
    print(
        f"  incremental add {add:5.1f}x faster than uhashring's add_node "
        f"(goal >= 10x: {verdict(add >= 10)}); remove {rm:5.1f}x; build {build:4.2f}x"
    )
    if points == 1024:
        sample = [f"user:{i}" for i in range(20_000)]
        lk = rounds(
            {
                "distpat HashRing": lambda: per_call_ns(ours.get_node, sample),
                "uhashring": lambda: per_call_ns(theirs.get_node, sample),
            },
            args.rounds,
        )
        print(
            f"  lookups on this ring: distpat {lk['distpat HashRing']:.0f} ns, "
            f"uhashring {lk['uhashring']:.0f} ns"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and keys, for a smoke run")
    args = p.parse_args()
    args.rounds = 3 if args.quick else 9
    args.keys = 20_000 if args.quick else 100_000
    args.balance_keys = 100_000 if args.quick else 1_000_000
    args.big_rounds = 2 if args.quick else 7
    print("# distpat benchmark: consistent hashing")
    print(describe("mmh3", "uhashring"))
    lookups(args)
    balance(args)
    big_ring(args)


if __name__ == "__main__":
    main()
