"""Options from flags, DISTPAT_* variables and TOML (distpat.config.options and the tables built on it).

TOML values are checked against their option's type, never coerced; sizes and durations take units
everywhere; ``:PORT`` is every IPv4 interface; each error names the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distpat.config.options import parse_hostport
from distpat.config.proxy import OPTIONS, build_config
from distpat.config.redis_shard import SHARD_OPTIONS, build_shard_options, nutcracker_level
from distpat.config.sidecar import build_sidecar_config
from distpat.errors import ConfigError

BASE = 'listen = "127.0.0.1:8080"\nupstream = ["http://127.0.0.1:9000"]\n'


def from_toml(tmp_path: Path, text: str, **flags: Any) -> dict[str, Any]:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    _, values = build_config(flags, environ={}, config_file=str(path))
    return values


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "max_body_bytes = 1.9",
            'max_body_bytes must be an integer or a string such as "64k", not a number (1.9)',
        ),
        ("workers = true", "workers must be an integer, not a boolean (true)"),
        ("workers = 2.0", "workers must be an integer, not a number (2.0)"),
        ('workers = "2"', "workers must be an integer, not a string ('2')"),
        ("forwarded = 1", "forwarded must be true or false, not an integer (1)"),
        ('forwarded = "yes"', "forwarded must be true or false, not a string ('yes')"),
        ("header_timeout = true", 'header_timeout must be a number or a string such as "500ms"'),
        ('header_timeout = "10 s"', "header_timeout must be a duration"),
        ("header_timeout = -1", "header_timeout must be a positive number of seconds"),
        ('max_body_bytes = "1.5m"', "max_body_bytes must be a size in bytes"),
        ("max_body_bytes = 0", "max_body_bytes must be at least 1 bytes"),
        ("admin = 9901", "admin must be a string, not an integer (9901)"),
        ('health_check = ["/x"]', "health_check must be a string, not an array (['/x'])"),
        ('balance = "random"', "balance must be one of round_robin, least_outstanding"),
        ("max_body_byte = 5", "unknown option 'max_body_byte' (did you mean 'max_body_bytes'?)"),
        ("max-body-bytes = 5", "unknown option 'max-body-bytes' (did you mean 'max_body_bytes'?)"),
        ("[sidecar]\nhsts = 5", "unknown table [sidecar]"),
    ],
)
def test_toml_values_are_checked_not_coerced(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "proxy.toml"
    with pytest.raises(ConfigError) as caught:
        from_toml(tmp_path, BASE + line + "\n")
    assert str(caught.value).startswith(f"{path}: "), caught.value
    assert message in str(caught.value)


def test_a_key_beside_the_command_table_is_rejected_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'workers' beside the \[proxy\] table"):
        from_toml(tmp_path, 'workers = 2\n[proxy]\nlisten = "127.0.0.1:1"\nupstream = "http://127.0.0.1:2"\n')
    with pytest.raises(ConfigError, match=r"unknown option 'listn' in \[proxy\]"):
        from_toml(tmp_path, '[proxy]\nlistn = "127.0.0.1:1"\n')
    values = from_toml(
        tmp_path, '[proxy]\nlisten = "127.0.0.1:1"\nupstream = "http://127.0.0.1:2"\nworkers = 3\n'
    )
    assert values["workers"] == 3
    assert values["upstream"] == ("http://127.0.0.1:2",)


def test_units_in_toml_flags_and_environment_alike(tmp_path: Path) -> None:
    values = from_toml(
        tmp_path,
        BASE
        + 'max_body_bytes = "1m"\nmax_header_bytes = 8192\nheader_timeout = "500ms"\nkeepalive_timeout = 3\n'
        'response_timeout = "1m30s"\nconnect_timeout = 0.25\n',
    )
    assert values["max_body_bytes"] == 1 << 20
    assert values["max_header_bytes"] == 8192
    assert values["header_timeout"] == pytest.approx(0.5)
    assert values["keepalive_timeout"] == 3.0
    assert values["response_timeout"] == 90.0
    assert values["connect_timeout"] == 0.25

    flags = {"listen": "127.0.0.1:1", "upstream": ["http://127.0.0.1:2"], "max_body_bytes": "64k"}
    environ = {
        "DISTPAT_HEADER_TIMEOUT": "2s",
        "DISTPAT_MAX_HEADER_BYTES": "16k",
        "DISTPAT_MAX_BODY_BYTES": "1g",
    }
    config, values = build_config(flags, environ=environ)
    assert config.settings.max_body_bytes == 64 * 1024  # the flag wins over the variable
    assert config.settings.max_header_bytes == 16 * 1024
    assert config.settings.header_timeout == 2.0
    with pytest.raises(ConfigError, match="DISTPAT_MAX_BODY_BYTES must be a size"):
        build_config({**flags, "max_body_bytes": None}, environ={"DISTPAT_MAX_BODY_BYTES": "1.9"})
    with pytest.raises(ConfigError, match="--workers must be a whole number, not 'True'"):
        build_config({**flags, "workers": "True"}, environ={})


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(BASE + "workers = 2\nmax_fails = 7\nupstream_keepalive = 9\n")
    flags = {"workers": "4"}
    _, values = build_config(
        flags, environ={"DISTPAT_MAX_FAILS": "5", "DISTPAT_WORKERS": "3"}, config_file=str(path)
    )
    assert (values["workers"], values["max_fails"], values["upstream_keepalive"]) == (4, 5, 9)
    # DISTPAT_CONFIG names the file when --config does not
    _, values = build_config({}, environ={"DISTPAT_CONFIG": str(path)})
    assert values["workers"] == 2


def test_underscores_and_the_response_head_limit_reach_the_engine(tmp_path: Path) -> None:
    config, _ = build_config({"listen": "127.0.0.1:1", "upstream": ["http://127.0.0.1:2"]}, environ={})
    assert config.settings.underscores_in_headers is False
    assert config.settings.max_response_header_bytes == 64 * 1024
    values = from_toml(tmp_path, BASE + 'underscores_in_headers = true\nmax_response_header_bytes = "8k"\n')
    assert values["underscores_in_headers"] is True
    config, _ = build_config(
        {
            "listen": "127.0.0.1:1",
            "upstream": ["http://127.0.0.1:2"],
            "underscores_in_headers": "on",
            "max_response_header_bytes": "1m",
        },
        environ={},
    )
    assert config.settings.underscores_in_headers is True
    assert config.settings.max_response_header_bytes == 1 << 20
    assert {o.name for o in OPTIONS} >= {"underscores_in_headers", "max_response_header_bytes", "log_level"}


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (":8443", ("0.0.0.0", 8443)),
        ("*:80", ("0.0.0.0", 80)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:8443", ("::", 8443)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_hostport(text, "--listen") == address


@pytest.mark.parametrize(
    "text", ["8443", ":", "host:", ":99999", "::1:80", "[::1:80", "a b:1", "[]:1", "x:\uff18"]
)
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="--listen must be HOST:PORT or :PORT"):
        parse_hostport(text, "--listen")


def test_sidecar_lists_from_the_environment_and_toml(tmp_path: Path) -> None:
    environ = {
        "DISTPAT_CERT": "a.pem,b.pem",
        "DISTPAT_KEY": "a.key, b.key",
        "DISTPAT_UPSTREAM": "http://127.0.0.1:1",
    }
    config, _ = build_sidecar_config({"listen": ":8443"}, environ=environ)
    assert config.tls is not None
    assert config.tls.pairs == (("a.pem", "a.key"), ("b.pem", "b.key"))
    assert config.listen == ("0.0.0.0", 8443)
    path = tmp_path / "s.toml"
    path.write_text(
        '[sidecar]\nlisten = ":8443"\ncert = "a.pem"\nkey = ["a.key"]\nupstream = "http://127.0.0.1:1"\n'
        "hsts = 600\n"
    )
    config, _ = build_sidecar_config({}, environ={}, config_file=str(path))
    assert config.tls is not None
    assert config.tls.pairs == (("a.pem", "a.key"),)
    path.write_text(
        'cert = "a.pem"\nkey = "a.key"\nupstream = "http://127.0.0.1:1"\nlisten = ":1"\nhsts = "600"\n'
    )
    with pytest.raises(ConfigError, match="hsts must be an integer, not a string"):
        build_sidecar_config({}, environ={}, config_file=str(path))


# -- redis-shard ------------------------------------------------------------------------------


def shard(flags: dict[str, Any], environ: dict[str, str] | None = None, options: str | None = None) -> Any:
    given = {o.name: None for o in SHARD_OPTIONS} | flags
    return build_shard_options(given, environ=environ or {}, options_file=options)


def test_redis_shard_defaults_as_nutcracker() -> None:
    opts = shard({"server": ["127.0.0.1:6379"]})
    assert opts.stats == ("127.0.0.1", 22222)
    assert opts.log_level == "info"
    (pool,) = opts.load()
    assert pool.listen.port == 22121
    assert pool.timeout is None
    assert shard({"server": ["127.0.0.1:6379"], "stats_port": "0"}).stats is None
    assert shard({"server": ["127.0.0.1:6379"], "stats_port": "2", "stats_addr": "0.0.0.0"}).stats == (
        "0.0.0.0",
        2,
    )


@pytest.mark.parametrize(
    ("verbosity", "level"),
    [(0, "error"), (3, "error"), (4, "warning"), (5, "info"), (6, "info"), (7, "debug"), (11, "debug")],
)
def test_nutcracker_verbosity_is_a_log_level(verbosity: int, level: str) -> None:
    assert nutcracker_level(verbosity) == level
    assert shard({"server": ["127.0.0.1:6379"], "verbose": str(verbosity)}).log_level == level


def test_verbosity_and_log_level_from_different_sources() -> None:
    servers = {"server": ["127.0.0.1:6379"]}
    assert shard({**servers, "verbose": "7"}, environ={"DISTPAT_LOG_LEVEL": "error"}).log_level == "debug"
    assert shard({**servers, "log_level": "warning"}, environ={"DISTPAT_VERBOSE": "7"}).log_level == "warning"
    with pytest.raises(ConfigError, match="not both"):
        shard(servers, environ={"DISTPAT_VERBOSE": "7", "DISTPAT_LOG_LEVEL": "error"})


def test_redis_shard_options_from_environment_and_toml(tmp_path: Path) -> None:
    path = tmp_path / "shard.toml"
    path.write_text(
        '[redis_shard]\nserver = ["127.0.0.1:6379:1:s1", "127.0.0.1:6380:1:s2"]\n'
        'hash_tag = "{}"\ntimeout = 500\n'
        'max_request_bytes = "1m"\nkeep_ring = true\nkey_cache = 0\nlog_format = "json"\nstats_port = 0\n'
    )
    opts = shard({}, options=str(path))
    (pool,) = opts.load()
    assert [s.name for s in pool.servers] == ["s1", "s2"]
    assert pool.hash_tag == b"{}"
    assert pool.timeout == 500
    assert opts.settings.max_request_bytes == 1 << 20
    assert opts.settings.keep_ring is True
    assert opts.settings.allow_scripts is False  # scripts stay refused unless asked for
    assert opts.settings.key_cache == 0
    assert opts.log_format == "json"
    assert opts.stats is None
    opts = shard({"timeout": "2s"}, environ={"DISTPAT_OPTIONS": str(path), "DISTPAT_KEY_CACHE": "10"})
    assert opts.load()[0].timeout == 2000
    assert opts.settings.key_cache == 10
    env = {"DISTPAT_SERVER": "127.0.0.1:1,127.0.0.1:2", "DISTPAT_KEEP_RING": "yes", "DISTPAT_STATS_PORT": "0"}
    opts = shard({}, environ=env)
    assert len(opts.load()[0].servers) == 2
    assert opts.settings.keep_ring is True
    assert shard({}, environ={**env, "DISTPAT_ALLOW_SCRIPTS": "true"}).settings.allow_scripts is True
    assert shard({"allow_scripts": True}, environ=env).settings.allow_scripts is True


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, "no servers"),
        ({"server": ["127.0.0.1:1"], "config": "x.yml"}, "not both"),
        ({"server": ["127.0.0.1"]}, "HOST:PORT"),
        ({"server": ["127.0.0.1:1"], "hash_tag": "{"}, "two characters"),
        ({"server": ["127.0.0.1:1"], "pool": "a"}, "--pool chooses a pool of --config"),
        ({"server": ["127.0.0.1:1"], "verbose": "12"}, "0 to 11"),
        ({"server": ["127.0.0.1:1"], "verbose": "6", "log_level": "debug"}, "not both"),
        ({"server": ["127.0.0.1:1"], "stats_port": "70000"}, "0 to 65535"),
        ({"server": ["127.0.0.1:1"], "timeout": "0"}, "positive"),
        ({"server": ["127.0.0.1:1"], "max_request_bytes": "64 MiB"}, "a size"),
        ({"server": ["127.0.0.1:1"], "pid_file": "/no/such/dir/x.pid"}, "cannot write in /no/such/dir"),
        ({"config": "x.yml", "hash_tag": "{}"}, "goes with --server"),
    ],
)
def test_redis_shard_bad_options(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        shard(flags)


def test_redis_shard_toml_is_checked_like_the_proxys(tmp_path: Path) -> None:
    path = tmp_path / "shard.toml"
    path.write_text('server = ["127.0.0.1:1"]\nkeep_ring = "yes"\n')
    with pytest.raises(ConfigError, match=f"{path}: keep_ring must be true or false, not a string"):
        shard({}, options=str(path))
    path.write_text('server = ["127.0.0.1:1"]\n[proxy]\nworkers = 2\n')
    with pytest.raises(ConfigError, match=r"unknown table \[proxy\]"):
        shard({}, options=str(path))
