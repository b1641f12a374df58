"""Read twemproxy (nutcracker) YAML configuration files.

:func:`parse_twemproxy` turns the text of a ``nutcracker.yml`` into one
:class:`TwemproxyPool` per pool, in file order, and accepts and rejects what
twemproxy 0.5.0 accepts and rejects (``src/nc_conf.c``), with these
deliberate differences:

* Host names are not resolved (this module does no I/O), so a ``listen:``
  host that does not resolve is accepted here and refused by nutcracker.
  An empty ``listen:`` host, which can never resolve, is rejected.
* twemproxy reads numbers into a C ``int`` and silently wraps: a weight of
  4294967297 is taken as 1, and 4294967296 as 0. Numbers above 2**31 - 1
  are rejected here instead.

The rules that are mirrored exactly, besides the obvious ones:

* Only block-style YAML: flow collections (``[...]``, ``{...}``), anchors,
  aliases, tags, directives and ``---``/``...`` markers are refused.
* Every value is taken as the literal text of its scalar: ``redis: "true"``
  is true, while ``redis: True``, ``yes`` or ``on`` are errors, and
  ``timeout: 0x10`` or ``1_000`` are not numbers. An empty scalar anywhere
  is an error.
* A key may be given as a one-line block list (``hash:`` then ``- md5``),
  because nutcracker applies each list item to the key; each pool must have
  exactly one key with a list value, which is normally ``servers``.
* A server line is split from the right: ``[name]`` after the last space,
  weight after the last ``:``, then port after the next ``:``. The rest is
  the host, so ``localhost:6379:1:2`` is host ``localhost:6379``, port 1.
  A line starting with ``/`` is a unix socket ``path:weight [name]``.
* Servers are duplicates when their *names* (see
  :attr:`TwemproxyServer.ring_name`) are equal; the same address twice under
  two names, or written ``6379`` and ``06379``, is allowed.
* ``client_connections`` is validated but nutcracker 0.5.0 then ignores it
  (``conf_validate_pool`` resets it to 0, unlimited); it is kept here as
  written.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from distpat.config.twemproxy_rules import (
    _DISALLOWED_TOKENS,
    _HANDLERS,
    TWEMPROXY_POOL_KEYS,
    _Context,
    _validate_pool,
)
from distpat.core.twemproxy_pool import (
    TWEMPROXY_DISTRIBUTIONS,
    TWEMPROXY_KETAMA_PORT,
    TwemproxyListen,
    TwemproxyPool,
    TwemproxyServer,
    _Reject,
)
from distpat.errors import ConfigError

__all__ = [
    "TWEMPROXY_DISTRIBUTIONS",
    "TWEMPROXY_KETAMA_PORT",
    "TWEMPROXY_POOL_KEYS",
    "TwemproxyListen",
    "TwemproxyPool",
    "TwemproxyServer",
    "load_twemproxy",
    "parse_twemproxy",
]


def _yaml_error(ctx: _Context, exc: yaml.YAMLError) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return ConfigError(
            f"{ctx.source}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
        )
    return ConfigError(f"{ctx.source}: invalid YAML: {exc}")


def _check_tokens(ctx: _Context, text: str) -> None:
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            for kind, what in _DISALLOWED_TOKENS:
                if isinstance(token, kind):
                    raise ConfigError(
                        f"{ctx.source}: {what} at line {token.start_mark.line + 1} "
                        "is not allowed; nutcracker reads block-style YAML only"
                    )
    except yaml.YAMLError as exc:
        raise _yaml_error(ctx, exc) from None


def _scalar_text(ctx: _Context, node: yaml.Node, what: str, *, pool: str | None, key: str | None) -> str:
    if not isinstance(node, yaml.ScalarNode):
        kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
        raise ctx.error(
            f"{what} must be a plain string, not a {kind}",
            pool=pool,
            key=key,
            node=node,
        )
    text = node.value
    if not isinstance(text, str) or text == "":
        raise ctx.error(f"{what} is empty", pool=pool, key=key, node=node)
    return text


def _parse_pool(ctx: _Context, name: str, node: yaml.Node) -> TwemproxyPool:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error("expected a mapping of keys (listen, servers, ...)", pool=name, node=node)
    values: dict[str, object] = {}
    servers: list[TwemproxyServer] = []
    entries: list[str] = []
    list_keys: list[str] = []
    for key_node, value_node in node.value:
        key = _scalar_text(ctx, key_node, "a key", pool=name, key=None)
        handler = _HANDLERS.get(key)
        if handler is None:
            raise ctx.error(
                f"unknown key; valid keys: {', '.join(TWEMPROXY_POOL_KEYS)}",
                pool=name,
                key=key,
                node=key_node,
            )
        if isinstance(value_node, yaml.SequenceNode):
            list_keys.append(key)
            if len(list_keys) > 1:
                raise ctx.error(
                    f"only one key of a pool may have a list value, and {list_keys[0]!r} already has one",
                    pool=name,
                    key=key,
                    node=value_node,
                )
            items = value_node.value
        elif isinstance(value_node, yaml.MappingNode):
            raise ctx.error(
                "a mapping is nested too deeply here; expected a value or a list",
                pool=name,
                key=key,
                node=value_node,
            )
        else:
            items = [value_node]
        for item in items:
            text = _scalar_text(ctx, item, "a value", pool=name, key=key)
            if key != "servers" and key in values:
                raise ctx.error("is given more than once", pool=name, key=key, node=item)
            try:
                value = handler(text)
            except _Reject as exc:
                raise ctx.error(str(exc), pool=name, key=key, node=item) from None
            if isinstance(value, TwemproxyServer):
                servers.append(value)
                entries.append(text)
            else:
                values[key] = value
    if not list_keys:
        raise ctx.error(
            "expected a list of servers ('- host:port:weight [name]' lines)",
            pool=name,
            key="servers",
            node=node,
        )
    return _validate_pool(ctx, name, node, values, servers, entries)


def parse_twemproxy(text: str, *, source: str = "<string>") -> dict[str, TwemproxyPool]:
    """Parse the text of a nutcracker YAML file into its pools, in file order.

    ``source`` names the file in error messages.

    Raises:
        ConfigError: the YAML is malformed, uses YAML nutcracker refuses, or
            a pool or key is invalid. The message names ``source``, the pool
            and the key, for example ``nutcracker.yml: pool 'alpha': key
            'servers': entry '127.0.0.1:6379:0 s1' has a zero weight``.
    """
    ctx = _Context(source)
    _check_tokens(ctx, text)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(ctx, exc) from None
    if root is None:
        raise ConfigError(f"{source}: no pools (the file has no YAML document)")
    if not isinstance(root, yaml.MappingNode):
        raise ctx.error("the top level must map pool names to pools", node=root)
    pools: dict[str, TwemproxyPool] = {}
    for name_node, pool_node in root.value:
        name = _scalar_text(ctx, name_node, "a pool name", pool=None, key=None)
        if name in pools:
            raise ctx.error("is defined more than once", pool=name, node=name_node)
        pools[name] = _parse_pool(ctx, name, pool_node)
    if not pools:
        raise ConfigError(f"{source}: no pools")
    listeners: dict[str, str] = {}
    for pool in pools.values():
        other = listeners.setdefault(pool.listen.address, pool.name)
        if other != pool.name:
            raise ctx.error(
                f"has the same listen address {pool.listen.address!r} as pool {other!r}",
                pool=pool.name,
                key="listen",
            )
    return pools


MAX_CONFIG_BYTES = 16 << 20


def load_twemproxy(path: str | os.PathLike[str]) -> dict[str, TwemproxyPool]:
    """Read and parse the nutcracker YAML file at ``path``.

    Raises:
        ConfigError: the file cannot be read or is not valid UTF-8, or
            :func:`parse_twemproxy` rejects its contents.
    """
    source = os.fspath(path)
    try:
        with Path(path).open("rb") as f:  # bounded: a device or an endless file is refused, not read forever
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES} bytes; not a twemproxy configuration")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 at byte {exc.start}") from None
    return parse_twemproxy(text, source=source)
