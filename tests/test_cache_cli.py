"""`distpat cache`'s options (flags, DISTPAT_* variables, a [cache] TOML table), its refusals,
``-t``, the ``[[stage]] kind = "cache"`` table of a pipeline file, and both commands as real
processes on 127.0.0.1 (`distpat cache` and `distpat run` with a cache stage).

Configuration is read in-process; ``-t`` and the served commands run as ``python -m distpat``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from distpat.cli import build_parser
from distpat.cli.flags import flag_values
from distpat.config import cache as cache_config
from distpat.config.cache import CACHE_OPTIONS, build_cache_config
from distpat.config.pipeline import load_pipeline
from distpat.config.proxy import OPTIONS
from distpat.core.cache_stage import CacheStage
from distpat.errors import ConfigError
from tests.clikit import distpat
from tests.httpkit import Backend, Reply, Request, Response, exchange
from tests.nutcracker import free_ports
from tests.test_observe_tls import scrape
from tests.tlskit import running_distpat

HOST = "127.0.0.1"
UP = f"http://{HOST}:8081"
BASE = ("--listen", f"{HOST}:8080", "--upstream", UP)


def parsed(*argv: str, environ: dict[str, str] | None = None, config_file: str | None = None) -> Any:
    args = build_parser().parse_args(["cache", *argv])
    return build_cache_config(
        flag_values(args, (*OPTIONS, *CACHE_OPTIONS)), environ=environ or {}, config_file=config_file
    )


def the_stage(config: Any) -> CacheStage:
    (stage,) = config.stages
    assert isinstance(stage, CacheStage)
    return stage


def described(stage: CacheStage) -> tuple[object, ...]:
    """What the options set: byte bounds, heuristic freshness, coalesce timeout, purge networks."""
    purge = str(stage.purge_from) if stage.purge_from is not None else None
    return (
        stage.store.max_bytes,
        stage.store.max_object_bytes,
        stage.policy.heuristic,
        stage.settings.coalesce_timeout,
        purge,
    )


# -- what the options make ----------------------------------------------------------------------


def test_the_defaults() -> None:
    config, values = parsed(*BASE)
    stage = the_stage(config)
    assert (stage.name, stage.kind) == ("cache", "cache")
    assert described(stage) == (128 * 1024 * 1024, 8 * 1024 * 1024, False, 5.0, None)
    assert stage.capture == 8 * 1024 * 1024
    assert values["store"] == "memory"
    assert config.upstreams == (UP,)
    assert config.listen == (HOST, 8080)


def test_every_cache_option_as_flags_and_a_proxy_flag_beside_them() -> None:
    config, _ = parsed(
        *BASE,
        *("--max-bytes", "2m", "--max-object-bytes", "64k", "--store", "memory"),
        *("--purge-from", "127.0.0.1", "--purge-from", "10.0.0.0/8", "--heuristic-freshness", "on"),
        *("--coalesce-timeout", "250ms", "--admin", f"{HOST}:9901"),
    )
    stage = the_stage(config)
    assert described(stage) == (2 * 1024 * 1024, 65536, True, 0.25, "127.0.0.1/32, 10.0.0.0/8")
    assert config.admin == (HOST, 9901)


def test_environment_variables_and_a_flag_over_them() -> None:
    env = {
        "DISTPAT_LISTEN": ":9000",
        "DISTPAT_UPSTREAM": UP,
        "DISTPAT_MAX_BYTES": "1m",
        "DISTPAT_MAX_OBJECT_BYTES": "4096",
        "DISTPAT_PURGE_FROM": "127.0.0.1,::1",
        "DISTPAT_HEURISTIC_FRESHNESS": "on",
        "DISTPAT_COALESCE_TIMEOUT": "2s",
    }
    assert described(the_stage(parsed(environ=env)[0])) == (1048576, 4096, True, 2.0, "127.0.0.1/32, ::1/128")
    assert the_stage(parsed("--max-bytes", "3m", environ=env)[0]).store.max_bytes == 3 * 1048576


@pytest.mark.parametrize("table", ["[cache]\n", ""])
def test_a_toml_file(tmp_path: Path, table: str) -> None:
    path = tmp_path / "cache.toml"
    path.write_text(
        f'{table}listen = "{HOST}:8080"\nupstream = ["{UP}"]\nmax_bytes = "1m"\nmax_object_bytes = 4096\n'
        'store = "memory"\npurge_from = ["127.0.0.1"]\nheuristic_freshness = "on"\n'
        'coalesce_timeout = "1500ms"\n'
    )
    assert described(the_stage(parsed(config_file=str(path))[0])) == (
        1048576,
        4096,
        True,
        1.5,
        "127.0.0.1/32",
    )
    env = {"DISTPAT_COALESCE_TIMEOUT": "3"}
    assert the_stage(parsed(config_file=str(path), environ=env)[0]).settings.coalesce_timeout == 3.0


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-bytes", "0"], "--max-bytes must be at least 1 bytes, not '0'"),
        (["--max-bytes", "x"], "--max-bytes must be a size in bytes (such as 65536, 64k, 1m, 1g), not 'x'"),
        (["--max-object-bytes", "0"], "--max-object-bytes must be at least 1 bytes, not '0'"),
        (
            ["--max-object-bytes", "2m", "--max-bytes", "1m"],
            "--max-object-bytes (2097152 bytes) exceeds --max-bytes (1048576 bytes)",
        ),
        (["--store", "redis"], "--store must be memory or redis://[:password@]host[:port][/db], not 'redis'"),
        (["--purge-from", "10.0.0.1/8"], "--purge-from: address '10.0.0.1/8': host bits are set"),
        (["--purge-from", "proxy.local"], "--purge-from: address 'proxy.local': not an IPv4 or IPv6 address"),
        (["--heuristic-freshness", "maybe"], "--heuristic-freshness must be one of on, off, not 'maybe'"),
        (["--coalesce-timeout", "0"], "--coalesce-timeout must be a positive number of seconds, not '0'"),
        (["--coalesce-timeout", "soon"], "--coalesce-timeout must be a duration"),
    ],
)
def test_refusals_say_what_is_wrong(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parsed(*BASE, *argv)
    assert message in str(caught.value)


def test_the_bound_check_names_the_flags() -> None:
    with pytest.raises(ConfigError) as caught:
        parsed(*BASE, "--max-object-bytes", "2m", "--max-bytes", "1m")
    assert "--max-object-bytes" in str(caught.value)


@pytest.mark.parametrize("where", ["flag", "stage table"])
def test_a_small_max_bytes_alone_is_accepted(tmp_path: Path, where: str) -> None:
    if where == "flag":
        stage = the_stage(parsed(*BASE, "--max-bytes", "1m")[0])
    else:
        stage = the_stage(pipeline(tmp_path, '[[stage]]\nkind = "cache"\nmax_bytes = "1m"\n')[0])
    assert stage.store.max_bytes == 1048576
    assert stage.store.max_object_bytes <= 1048576


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_bytes = 0", "max_bytes must be at least 1 bytes, not 0"),
        ("max_byte = 1", "unknown option 'max_byte' in [cache] (did you mean 'max_bytes'?)"),
        ("heuristic_freshness = true", "heuristic_freshness must be a string, not a boolean (true)"),
        ("coalesce_timeout = -1", "coalesce_timeout must be a positive number of seconds, not -1"),
        ('store = "disk"', "store must be memory or redis://[:password@]host[:port][/db], not 'disk'"),
        ('purge_from = ["10.0.0.1/8"]', "host bits are set"),
    ],
)
def test_toml_errors_name_the_file_and_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[cache]\nlisten = ":1"\nupstream = ["{UP}"]\n{line}\n')
    with pytest.raises(ConfigError) as caught:
        parsed(config_file=str(path))
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


# -- -t ------------------------------------------------------------------------------------------


def test_t_checks_everything_and_binds_nothing(tmp_path: Path, held_port: int) -> None:
    argv = [
        "--listen",
        f"{HOST}:{held_port}",
        "--upstream",
        UP,
        "--max-bytes",
        "1m",
        "--max-object-bytes",
        "64k",
    ]
    done = distpat("cache", "-t", *argv, "--purge-from", "127.0.0.1", "--coalesce-timeout", "1s")
    assert (done.returncode, done.stdout, done.stderr) == (0, "configuration OK\n", ""), done
    good = tmp_path / "cache.toml"
    good.write_text(f'[cache]\nlisten = "{HOST}:{held_port}"\nupstream = ["{UP}"]\nmax_bytes = "8m"\n')
    done = distpat("cache", "--test-config", "--config", str(good))
    assert (done.returncode, done.stdout) == (0, "configuration OK\n"), done
    for bad, message in (
        (
            (*argv, "--max-object-bytes", "2m"),
            "distpat: error: --max-object-bytes (2097152 bytes) exceeds --max-bytes",
        ),
        ((*argv, "--coalesce-timeout", "-1"), "distpat: error: --coalesce-timeout must be a positive"),
        (
            (*argv, "--store", "disk"),
            "distpat: error: --store must be memory or redis://[:password@]host[:port][/db], not 'disk'",
        ),
        ((*argv, "--purge-from", "x"), "distpat: error: --purge-from: address 'x'"),
    ):
        done = distpat("cache", "-t", *bad)
        assert done.returncode == 2, done
        assert done.stderr.startswith(message), done.stderr
        assert done.stderr.count("\n") == 1
    done = distpat("cache", "-t", "--config", str(good), env={"DISTPAT_HEURISTIC_FRESHNESS": "sometimes"})
    assert done.returncode == 2, done
    assert "DISTPAT_HEURISTIC_FRESHNESS must be one of on, off, not 'sometimes'" in done.stderr, done


def test_the_command_is_listed_and_its_help_names_its_flags() -> None:
    done = distpat("--help")
    assert done.returncode == 0
    assert "cache" in done.stdout.split("COMMAND", 1)[1]
    kinds = " ".join(distpat("run", "--help").stdout.split()).partition("(kinds: ")[2].partition(")")[0]
    assert "cache" in kinds.split(", ")
    help_text = distpat("cache", "--help").stdout
    for flag in (
        "--max-bytes",
        "--max-object-bytes",
        "--store",
        "--purge-from",
        "--heuristic-freshness",
        "--coalesce-timeout",
        "--upstream",
        "--admin",
    ):
        assert flag in help_text


# -- a pipeline file's [[stage]] table ------------------------------------------------------------


def pipeline(tmp_path: Path, stage: str) -> Any:
    path = tmp_path / "site.toml"
    path.write_text(f'listen = "{HOST}:8080"\nupstream = ["{UP}"]\n{stage}')
    return load_pipeline(str(path), environ={})


def test_a_pipeline_with_a_cache_stage(tmp_path: Path) -> None:
    config, _ = pipeline(
        tmp_path,
        '[[stage]]\nkind = "cache"\nname = "edge"\nmax_bytes = "2m"\nmax_object_bytes = "64k"\n'
        'purge_from = ["127.0.0.1", "10.0.0.0/8"]\nheuristic_freshness = "on"\ncoalesce_timeout = 2\n',
    )
    stage = the_stage(config)
    assert stage.name == "edge"
    assert described(stage) == (2 * 1048576, 65536, True, 2.0, "127.0.0.1/32, 10.0.0.0/8")
    default, _ = pipeline(tmp_path, '[[stage]]\nkind = "cache"\n')
    assert described(the_stage(default)) == (128 * 1048576, 8 * 1048576, False, 5.0, None)


def test_the_documented_stage_table_loads(tmp_path: Path) -> None:
    doc = cache_config.__doc__ or ""
    example = doc.partition("::\n\n")[2].split("\n\n")[0]
    table = "\n".join(line.strip() for line in example.splitlines()) + "\n"
    assert table.startswith('[[stage]]\nkind = "cache"\n')
    pipeline(tmp_path, table)


@pytest.mark.parametrize(
    ("stage", "where", "message"),
    [
        (
            "max_byte = 3\n",
            ", key 'max_byte'",
            "unknown key (did you mean 'max_bytes'?); a cache stage takes:",
        ),
        ('listen = "x"\n', ", key 'listen'", "unknown key; a cache stage takes: max_bytes, max_object_bytes"),
        (
            'max_bytes = "1k"\nmax_object_bytes = "2k"\n',
            "",
            "max_object_bytes (2048 bytes) exceeds max_bytes (1024 bytes)",
        ),
        ('purge_from = ["x"]\n', ", key 'purge_from'", "address 'x': not an IPv4 or IPv6 address"),
        (
            'store = "redis"\n',
            ", key 'store'",
            "must be memory or redis://[:password@]host[:port][/db], not 'redis'",
        ),
        ('max_bytes = "lots"\n', ", key 'max_bytes'", "must be a size in bytes"),
        ('heuristic_freshness = "yes"\n', ", key 'heuristic_freshness'", "must be one of on, off"),
    ],
)
def test_stage_table_errors_name_the_file_table_and_key(
    tmp_path: Path, stage: str, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        pipeline(tmp_path, '[[stage]]\nkind = "cache"\n' + stage)
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'site.toml'}: [[stage]] 1 (kind = 'cache'){where}"), text
    assert message in text


def test_t_checks_a_pipeline_file_with_a_cache_stage(tmp_path: Path, held_port: int) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        f'listen = "{HOST}:{held_port}"\nupstream = ["{UP}"]\n[[stage]]\nkind = "cache"\nmax_bytes = "1m"\n'
        'max_object_bytes = "1m"\n'
    )
    done = distpat("run", "-t", "--config", str(path))
    assert (done.returncode, done.stdout) == (0, "configuration OK\n"), done
    path.write_text(path.read_text().replace('max_object_bytes = "1m"', 'max_object_bytes = "2m"'))
    done = distpat("run", "-t", "--config", str(path))
    assert done.returncode == 2, done
    assert "max_object_bytes (2097152 bytes) exceeds max_bytes (1048576 bytes)" in done.stderr


# -- the commands as real processes ------------------------------------------------------------------


class Versions:
    """``target vN``: N counts the backend's answers, fresh for a minute, varying on Accept-Language."""

    def __init__(self) -> None:
        self.answered = 0

    async def __call__(self, request: Request) -> Reply:
        self.answered += 1
        body = b"%s v%d" % (request.target, self.answered)
        return Reply(headers=[(b"Cache-Control", b"max-age=60"), (b"Vary", b"Accept-Language")], body=body)


async def get(port: int, target: bytes, *fields: bytes, method: bytes = b"GET") -> Response:
    head = b"".join(f + b"\r\n" for f in fields)
    raw = method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n" + head + b"Connection: close\r\n\r\n"
    (response,) = await exchange(port, raw)
    return response


async def test_served_hits_purge_and_metrics(tmp_path: Path) -> None:
    async with Backend(Versions()) as backend:
        port, admin = free_ports(2)
        argv = ["--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--upstream", backend.url]
        argv += ["--purge-from", "127.0.0.1", "--max-bytes", "1m", "--max-object-bytes", "64k"]
        async with running_distpat("cache", tmp_path, port, argv, also=(admin,)):
            miss = await get(port, b"/a", b"Accept-Language: en")
            hit = await get(port, b"/a", b"Accept-Language: en")
            other = await get(port, b"/a", b"Accept-Language: fr")
            purged = await get(port, b"/a", method=b"PURGE")
            again = await get(port, b"/a", b"Accept-Language: en")
            samples = await scrape(admin)
        assert (miss.body, hit.body, other.body, again.body) == (b"/a v1", b"/a v1", b"/a v2", b"/a v3")
        assert miss.header(b"cache-status") == b"distpat; fwd=uri-miss; stored"
        assert (hit.header(b"cache-status") or b"").startswith(b"distpat; hit; ttl=")
        assert hit.header(b"age") is not None
        assert json.loads(purged.body) == {"purged": 2}
        assert len(backend.requests) == 3
    results = {
        dict(labels)["result"]: value
        for (name, labels), value in samples.items()
        if name == "distpat_cache_requests_total"
    }
    assert results == {"hit": 1, "miss": 3, "purge": 1}
    assert samples[("distpat_cache_objects", frozenset({("stage", "cache")}))] == 1
    assert samples[("distpat_cache_bytes", frozenset({("stage", "cache")}))] > 0


async def test_served_pipeline_with_a_cache_stage(tmp_path: Path) -> None:
    async with Backend(Versions()) as backend:
        (port,) = free_ports(1)
        path = tmp_path / "site.toml"
        path.write_text(
            f'listen = "{HOST}:{port}"\nupstream = ["{backend.url}"]\n'
            '[[stage]]\nkind = "cache"\nname = "edge"\nmax_bytes = "1m"\nmax_object_bytes = "64k"\n'
            'purge_from = ["10.0.0.0/8"]\n'
        )
        async with running_distpat("run", tmp_path, port, ["--config", str(path)]):
            answers = [await get(port, b"/p") for _ in range(3)]
            refused = await get(port, b"/p", method=b"PURGE")
        assert [a.body for a in answers] == [b"/p v1"] * 3
        assert [(a.header(b"cache-status") or b"").split(b";")[1].strip() for a in answers] == [
            b"fwd=uri-miss",
            b"hit",
            b"hit",
        ]
        assert refused.status == 405
        assert len(backend.requests) == 1
