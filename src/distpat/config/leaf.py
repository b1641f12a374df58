"""`distpat leaf` settings: a search leaf holding one shard of a corpus (the book's chapter 7).

`distpat leaf --listen HOST:PORT --corpus DIR [--shard I/N] [--max-k N]`, plus the options of
`distpat proxy` that a server without upstreams has (``--admin``, ``--workers``, logging...; no
``--upstream``). The corpus is every text file under DIR (recursively; a file with a NUL byte is
not text and is left out; UTF-8, undecodable bytes replaced), each document named by its path
relative to DIR. Every leaf reads the whole corpus for its statistics and indexes only its shard
(:mod:`distpat.core.search`), so leaves given the same DIR score alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from distpat.config.options import Kind, Option, checked_by, resolve_options
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.core.leaf_stage import MAX_K, LeafStage
from distpat.core.search import CorpusStats, Index, parse_shard, shard_of
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig

__all__ = ["LEAF_OPTIONS", "build_leaf_config", "read_corpus"]

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


LEAF_OPTIONS: tuple[Option, ...] = (
    Option("corpus", Kind.TEXT, None, "the directory of text documents (required)", "DIR"),
    Option(
        "shard",
        Kind.TEXT,
        "0/1",
        "this leaf's shard of the corpus: I/N",
        "I/N",
        check=checked_by(parse_shard),
    ),
    Option("max_k", Kind.COUNT, MAX_K, "the most hits a query may ask for (k)", "N", minimum=1),
)

_SERVER_OPTIONS = tuple(o for o in OPTIONS if o.name != "upstream")
ALL_OPTIONS = (*_SERVER_OPTIONS, *LEAF_OPTIONS)


def read_corpus(directory: str) -> list[tuple[str, str]]:
    """Every text document under ``directory``: (path relative to it, text), sorted by path."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"corpus {directory!r}: no such directory")
    out: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.stat().st_size > MAX_DOCUMENT_BYTES:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        out.append((path.relative_to(root).as_posix(), data.decode("utf-8", "replace")))
    return out


def build_leaf_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """`distpat leaf`'s configuration: a server whose one stage answers from the shard's index."""
    values = resolve_options(ALL_OPTIONS, flags, environ=environ, config_file=config_file, table="leaf")
    if values["corpus"] is None:
        raise ConfigError("no corpus: give --corpus DIR (a directory of text documents)")
    index_of, count = parse_shard(values["shard"])
    documents = read_corpus(values["corpus"])
    stats = CorpusStats.of(documents)
    mine = [d for d in documents if shard_of(d[0], count) == index_of]
    stage = LeafStage(Index(mine, stats), values["shard"], max_k=values["max_k"])
    config = proxy_config({**values, "upstream": ()}, local_only=True)
    return replace(config, stages=(stage,)), values
