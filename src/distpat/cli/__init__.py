"""The ``distpat`` command.

Each subcommand lives in its own module with a ``register(subparsers)``
function; this module only assembles them and turns distpat's errors into a
one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from distpat import __version__
from distpat.cli import cache, proxy, ratelimit, redis_shard, ring, run, scatter, shard, sidecar, split
from distpat.errors import DistpatError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distpat",
        description=(
            "Serving patterns of Designing Distributed Systems (Burns, 2018), natively in asyncio "
            "Python: consistent-hashing rings (ring), an HTTP/1.1 reverse proxy (proxy), a "
            "TLS-terminating sidecar (sidecar), a Redis sharding ambassador that reads "
            "twemproxy's configuration (redis-shard), an HTTP sharding ambassador placing keys as "
            "nginx's hash ... consistent does (shard), an experiment router (split), a rate "
            "limiter (ratelimit), a cache (cache), a scatter/gather root (scatter) and pipelines of "
            "stages from a file (run). Each command has its "
            "own --help."
        ),
    )
    parser.add_argument("--version", action="version", version=f"distpat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    ring.register(sub)
    proxy.register(sub)
    sidecar.register(sub)
    redis_shard.register(sub)
    shard.register(sub)
    split.register(sub)
    ratelimit.register(sub)
    cache.register(sub)
    scatter.register(sub)
    run.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Names and keys may be any bytes: never die printing them on a non-UTF-8 terminal.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except DistpatError as exc:
        print(f"distpat: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `distpat ring locate ... | head`
        sys.stderr.close()
        return 0
