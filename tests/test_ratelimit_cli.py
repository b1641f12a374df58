"""`distpat ratelimit`'s options (flags, DISTPAT_* variables, a [ratelimit] TOML table), its
refusals, ``-t``, the ``[[stage]] kind = "ratelimit"`` table, and the command as a real process.

Configuration is read in-process; ``-t`` and the served command run as real ``python -m distpat``
processes on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distpat.cli import build_parser
from distpat.cli.flags import flag_values
from distpat.config.pipeline import load_pipeline
from distpat.config.ratelimit import RATELIMIT_OPTIONS, build_ratelimit_config
from distpat.core.ratelimit_stage import DEFAULT_MAX_KEYS, RateLimitStage
from distpat.core.stage import Answer, Forward, Request, Tick
from distpat.errors import ConfigError
from tests.clikit import distpat
from tests.httpkit import Backend, Response, exchange
from tests.nutcracker import free_ports
from tests.tlskit import running_distpat

HOST = "127.0.0.1"
UP = f"http://{HOST}:8081"
BASE = ("--listen", f"{HOST}:8080", "--upstream", UP)


def parsed(*argv: str, environ: dict[str, str] | None = None, config_file: str | None = None) -> Any:
    args = build_parser().parse_args(["ratelimit", *argv])
    return build_ratelimit_config(
        flag_values(args, RATELIMIT_OPTIONS), environ=environ or {}, config_file=config_file
    )


def the_stage(config: Any) -> RateLimitStage:
    (stage,) = config.stages
    assert isinstance(stage, RateLimitStage)
    return stage


def judge(stage: RateLimitStage, at: float = 0.0, **fields: bytes) -> Any:
    request = Request(
        b"GET", b"/", client=HOST, fields={k.replace("_", "-").encode(): v for k, v in fields.items()}
    )
    return stage.on_request(request, Tick(mono=at, wall=at, rand=0))


# -- what the options make -------------------------------------------------------------------


def test_the_defaults_limit_per_ip() -> None:
    config, _ = parsed(*BASE, "--rate", "10r/s")
    stage = the_stage(config)
    (rule,) = stage.rules
    assert (rule.limit.name, rule.limit.rate, rule.limit.burst, rule.limit.delay) == ("per-ip", 10.0, 0, 0)
    assert (rule.limit.status, rule.key.text, rule.dry_run, rule.concurrency) == (429, "ip", False, 0)
    assert (stage.name, stage.trusted, stage.tables[0].max_keys) == ("ratelimit", None, DEFAULT_MAX_KEYS)
    assert config.upstreams == (UP,)
    assert isinstance(judge(stage), Forward)
    refused = judge(stage)
    assert isinstance(refused, Answer)
    assert refused.status == 429


def test_every_limit_option_as_flags() -> None:
    config, _ = parsed(
        *BASE,
        *("--rate", "600r/m", "--burst", "5", "--delay", "2", "--key", "header:X-Api-Key"),
        *("--status", "503", "--dry-run", "--max-keys", "100", "--concurrency", "3"),
        *("--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1", "--limit-name", "api"),
    )
    stage = the_stage(config)
    (rule,) = stage.rules
    assert (rule.limit.name, rule.limit.rate, rule.limit.burst, rule.limit.delay) == ("api", 10.0, 5, 2)
    assert (rule.limit.status, rule.key.text, rule.dry_run, rule.concurrency) == (
        503,
        "header:X-Api-Key",
        True,
        3,
    )
    assert stage.tables[0].max_keys == 100
    assert stage.trusted is not None
    assert str(stage.trusted) == "10.0.0.0/8, ::1/128"
    assert b"x-api-key" in stage.reads
    assert (
        the_stage(parsed(*BASE, "--rate", "1r/s", "--key", "cookie:sid")[0]).rules[0].limit.name
        == "per-cookie"
    )
    assert (
        the_stage(parsed(*BASE, "--rate", "1r/s", "--key", "ip+path")[0]).rules[0].limit.name == "per-ip+path"
    )


def test_nodelay_is_delay_equal_to_burst() -> None:
    (rule,) = the_stage(parsed(*BASE, "--rate", "1r/m", "--burst", "4", "--nodelay")[0]).rules
    assert (rule.limit.burst, rule.limit.delay) == (4, 4)
    (held,) = the_stage(parsed(*BASE, "--rate", "1r/m", "--burst", "4")[0]).rules
    assert held.limit.delay == 0  # nginx's default: the burst is held


def test_environment_variables_and_a_flag_over_them() -> None:
    env = {
        "DISTPAT_LISTEN": ":9000",
        "DISTPAT_UPSTREAM": UP,
        "DISTPAT_RATE": "20r/s",
        "DISTPAT_BURST": "7",
        "DISTPAT_NODELAY": "true",
        "DISTPAT_KEY": "query:token",
        "DISTPAT_TRUSTED_PROXY": "10.0.0.0/8,192.168.0.0/16",
        "DISTPAT_DRY_RUN": "yes",
    }
    stage = the_stage(parsed(environ=env)[0])
    (rule,) = stage.rules
    assert (rule.limit.rate, rule.limit.burst, rule.limit.delay, rule.key.text) == (20.0, 7, 7, "query:token")
    assert rule.dry_run
    assert str(stage.trusted) == "10.0.0.0/8, 192.168.0.0/16"
    assert the_stage(parsed("--burst", "9", environ=env)[0]).rules[0].limit.burst == 9


@pytest.mark.parametrize("table", ["[ratelimit]\n", ""])
def test_a_toml_file(tmp_path: Path, table: str) -> None:
    path = tmp_path / "ratelimit.toml"
    path.write_text(
        f'{table}listen = "{HOST}:8080"\nupstream = ["{UP}"]\nrate = "5r/s"\nburst = 10\ndelay = 3\n'
        'key = "header:X-User"\nstatus = 503\ndry_run = true\nmax_keys = 50\nconcurrency = 2\n'
        'trusted_proxy = ["127.0.0.1"]\nlimit_name = "users"\n'
    )
    stage = the_stage(parsed(config_file=str(path))[0])
    (rule,) = stage.rules
    assert (rule.limit.name, rule.limit.rate, rule.limit.burst, rule.limit.delay) == ("users", 5.0, 10, 3)
    assert (rule.limit.status, rule.dry_run, rule.concurrency, stage.tables[0].max_keys) == (503, True, 2, 50)
    assert str(stage.trusted) == "127.0.0.1/32"


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no rate: give --rate such as 10r/s or 600r/m"),
        (["--rate", "0.5r/s"], "--rate: invalid rate '0.5r/s': expected a positive integer and r/s or r/m"),
        (["--rate", "1r/h"], "--rate: invalid rate '1r/h'"),
        (["--rate", "0r/s"], "--rate: invalid rate '0r/s': the number must be between 1 and"),
        (["--rate", "1r/s", "--burst", "-1"], "--burst must be at least 0, not -1"),
        (["--rate", "1r/s", "--burst", "x"], "--burst must be a whole number, not 'x'"),
        (["--rate", "1r/s", "--burst", "2", "--delay", "3"], "--delay 3 exceeds --burst 2"),
        (
            ["--rate", "1r/s", "--burst", "2", "--delay", "1", "--nodelay"],
            "--nodelay and --delay 1: give one",
        ),
        (["--rate", "1r/s", "--delay", "0", "--nodelay"], "--nodelay and --delay 0: give one"),
        (
            ["--rate", "1r/s", "--status", "200"],
            "--status must be an HTTP error status (4xx or 5xx), not 200",
        ),
        (
            ["--rate", "1r/s", "--status", "600"],
            "--status must be an HTTP error status (4xx or 5xx), not 600",
        ),
        (["--rate", "1r/s", "--key", "host"], "--key: key source 'host': use one of ip, uri, path"),
        (["--rate", "1r/s", "--key", "header:"], "needs a name made of token characters"),
        (["--rate", "1r/s", "--max-keys", "0"], "--max-keys must be at least 1, not 0"),
        (["--rate", "1r/s", "--concurrency", "-2"], "--concurrency must be at least 0, not -2"),
        (
            ["--rate", "1r/s", "--trusted-proxy", "10.0.0.1/8"],
            "--trusted-proxy: trusted proxy '10.0.0.1/8': host bits",
        ),
        (["--rate", "1r/s", "--trusted-proxy", "proxy.local"], "not an IPv4 or IPv6 address or network"),
        (
            ["--rate", "1r/s", "--limit-name", 'a"b'],
            "--limit-name: limit name 'a\"b' must be printable ASCII",
        ),
    ],
)
def test_refusals_say_what_is_wrong(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parsed(*BASE, *argv)
    assert message in str(caught.value)


def test_redis_options_make_a_shared_stage() -> None:
    config, _ = parsed(
        *BASE, "--rate", "1r/s", "--redis", "redis://127.0.0.1:6390/2", "--on-redis-error", "closed"
    )
    (stage,) = config.stages
    assert isinstance(stage, RateLimitStage)
    assert (stage.redis_url, stage.on_redis_error, config.redis) == (
        "redis://127.0.0.1:6390/2",
        "closed",
        stage.redis_url,
    )
    default, _ = parsed(*BASE, "--rate", "1r/s")
    assert (default.redis, default.stages[0].redis_url) == (None, None)
    with pytest.raises(ConfigError, match="--on-redis-error must be one of open, closed, local"):
        parsed(*BASE, "--rate", "1r/s", "--redis", "redis://127.0.0.1", "--on-redis-error", "maybe")
    with pytest.raises(ConfigError, match="give redis://"):
        parsed(*BASE, "--rate", "1r/s", "--redis", "http://127.0.0.1")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("rate = 10", "rate must be a string, not an integer (10)"),
        ("burst = true", "burst must be an integer, not a boolean (true)"),
        ("nodelay = 1", "nodelay must be true or false"),
        ("bursts = 2", "unknown option 'bursts' in [ratelimit] (did you mean 'burst'?)"),
        ('trusted_proxy = ["10.0.0.1/8"]', "host bits are set"),
    ],
)
def test_toml_errors_name_the_file_and_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    text = f'[ratelimit]\nlisten = ":1"\nupstream = ["{UP}"]\n{line}\n'
    path.write_text(text if line.startswith("rate ") else text + 'rate = "1r/s"\n')
    with pytest.raises(ConfigError) as caught:
        parsed(config_file=str(path))
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


# -- -t ------------------------------------------------------------------------------------------


def test_t_checks_everything_and_binds_nothing(tmp_path: Path, held_port: int) -> None:
    argv = ["--listen", f"{HOST}:{held_port}", "--upstream", UP, "--rate", "10r/s", "--burst", "5"]
    done = distpat("ratelimit", "-t", *argv, "--nodelay", "--trusted-proxy", "127.0.0.1/32")
    assert (done.returncode, done.stdout, done.stderr) == (0, "configuration OK\n", ""), done
    good = tmp_path / "ratelimit.toml"
    good.write_text(f'[ratelimit]\nlisten = "{HOST}:{held_port}"\nupstream = ["{UP}"]\nrate = "1r/s"\n')
    done = distpat("ratelimit", "--test-config", "--config", str(good))
    assert (done.returncode, done.stdout) == (0, "configuration OK\n"), done
    for bad, message in (
        ((*argv, "--delay", "6"), "distpat: error: --delay 6 exceeds --burst 5"),
        ((*argv, "--delay", "1", "--nodelay"), "distpat: error: --nodelay and --delay 1: give one"),
        (argv[:4], "distpat: error: no rate: give --rate"),
    ):
        done = distpat("ratelimit", "-t", *bad)
        assert done.returncode == 2, done
        assert done.stderr.startswith(message), done.stderr
        assert done.stderr.count("\n") == 1
    done = distpat("ratelimit", "-t", "--config", str(good), env={"DISTPAT_RATE": "fast"})
    assert done.returncode == 2, done
    assert "DISTPAT_RATE: invalid rate 'fast'" in done.stderr, done


def test_the_command_is_listed() -> None:
    done = distpat("--help")
    assert done.returncode == 0
    assert "ratelimit" in done.stdout.split("COMMAND", 1)[1]
    kinds = " ".join(distpat("run", "--help").stdout.split()).partition("(kinds: ")[2].partition(")")[0]
    assert "ratelimit" in kinds.split(", ")


# -- a pipeline file's [[stage]] table ------------------------------------------------------------

TWO_LIMITS = (
    '[[stage]]\nkind = "ratelimit"\nname = "limits"\ntrusted_proxy = ["127.0.0.1/32"]\nmax_keys = 1000\n'
    'limits = [{ name = "per-ip", rate = "10r/s", burst = 1, key = "ip", nodelay = true },\n'
    '  { name = "per-key", rate = "100r/m", key = "header:X-Api-Key", concurrency = 4, status = 503 }]\n'
)


def pipeline(tmp_path: Path, stage: str) -> Any:
    path = tmp_path / "site.toml"
    path.write_text(f'listen = "{HOST}:8080"\nupstream = ["{UP}"]\n{stage}')
    return load_pipeline(str(path), environ={}), path


def test_a_pipeline_with_two_limits(tmp_path: Path) -> None:
    (config, _), _ = pipeline(tmp_path, TWO_LIMITS)
    (stage,) = config.stages
    assert isinstance(stage, RateLimitStage)
    ip, key = stage.rules
    assert (stage.name, str(stage.trusted), stage.tables[0].max_keys) == ("limits", "127.0.0.1/32", 1000)
    assert (ip.limit.name, ip.limit.rate, ip.limit.burst, ip.limit.delay, ip.key.text) == (
        "per-ip",
        10.0,
        1,
        1,
        "ip",
    )
    assert (key.limit.name, key.limit.rate, key.concurrency, key.limit.status) == ("per-key", 1.666, 4, 503)
    assert stage.policy == b'"per-ip";q=2;w=1, "per-key";q=1;w=1'
    # a client behind the trusted proxy has its own bucket; the key limit is counted beside it
    first = judge(stage, x_forwarded_for=b"10.0.0.1", x_api_key=b"k1")
    assert isinstance(first, Forward)
    assert dict(first.respond)[b"RateLimit"] == b'"per-ip";r=1;t=1, "per-key";r=0;t=1'
    refused = judge(stage, x_forwarded_for=b"10.0.0.2", x_api_key=b"k1")
    assert isinstance(refused, Answer)
    assert refused.status == 503
    assert isinstance(judge(stage, x_forwarded_for=b"10.0.0.2", x_api_key=b"k2"), Forward)


@pytest.mark.parametrize(
    ("stage", "key", "message"),
    [
        ('[[stage]]\nkind = "ratelimit"\n', "limits", "needs an array of limits"),
        ('[[stage]]\nkind = "ratelimit"\nlimits = []\n', "limits", "needs an array of limits"),
        ('[[stage]]\nkind = "ratelimit"\nlimits = ["10r/s"]\n', "limits[0]", "must be a table"),
        (
            '[[stage]]\nkind = "ratelimit"\nlimits = [{ burst = 2 }]\n',
            "limits[0]",
            "no rate: give limits[0].rate",
        ),
        (
            '[[stage]]\nkind = "ratelimit"\nlimits = [{ rate = "1r/s", bursts = 2 }]\n',
            "limits[0].bursts",
            "unknown key; a limit takes rate, burst",
        ),
        (
            '[[stage]]\nkind = "ratelimit"\n'
            'limits = [{ rate = "1r/s" }, { rate = "1r/s", burst = 1, delay = 2 }]\n',
            "limits[1]",
            "limits[1].delay 2 exceeds limits[1].burst 1",
        ),
        (
            '[[stage]]\nkind = "ratelimit"\nlimits = [{ rate = "1r/s", delay = 0, nodelay = true }]\n',
            "limits[0]",
            "limits[0].nodelay and limits[0].delay 0: give one",
        ),
        (
            '[[stage]]\nkind = "ratelimit"\nlimits = [{ rate = "1r/s" }, { rate = "2r/s" }]\n',
            "limits[1].name",
            "limits[0] is named 'per-ip' already",
        ),
        ('[[stage]]\nkind = "ratelimit"\nlimits = [{ rate = 10 }]\n', "limits[0].rate", "must be a string"),
        (
            '[[stage]]\nkind = "ratelimit"\nlimits = [{ rate = "1r/s", status = 302 }]\n',
            "limits[0].status",
            "4xx or 5xx",
        ),
        (
            '[[stage]]\nkind = "ratelimit"\nmax_key = 3\nlimits = [{ rate = "1r/s" }]\n',
            "max_key",
            "did you mean 'max_keys'?",
        ),
        (
            '[[stage]]\nkind = "ratelimit"\ntrusted_proxy = ["nope"]\nlimits = [{ rate = "1r/s" }]\n',
            "trusted_proxy",
            "not an IPv4 or IPv6 address",
        ),
    ],
)
def test_stage_table_errors_name_the_file_table_and_key(
    tmp_path: Path, stage: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        pipeline(tmp_path, stage)
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'site.toml'}: [[stage]] 1 (kind = 'ratelimit'), key '{key}'"), text
    assert message in text


# -- the command as a real process ------------------------------------------------------------------


async def get(port: int, *fields: bytes) -> Response:
    head = b"".join(f + b"\r\n" for f in fields)
    (response,) = await exchange(
        port, b"GET /x HTTP/1.1\r\nHost: h\r\n" + head + b"Connection: close\r\n\r\n"
    )
    return response


async def test_served_rate_burst_and_refusal(tmp_path: Path) -> None:
    async with Backend() as backend:
        (port,) = free_ports(1)
        argv = ["--listen", f"{HOST}:{port}", "--upstream", backend.url, "--rate", "1r/m", "--burst", "2"]
        async with running_distpat("ratelimit", tmp_path, port, [*argv, "--nodelay"]):
            answers = [await get(port) for _ in range(4)]
        assert [r.status for r in answers] == [200, 200, 200, 429]
        for remaining, response in zip((2, 1, 0), answers, strict=False):
            assert response.header(b"RateLimit-Policy") == b'"per-ip";q=3;w=188'
            assert response.header(b"RateLimit") is not None
            assert response.header(b"RateLimit").startswith(b'"per-ip";r=%d;' % remaining)  # type: ignore[union-attr]
        refused = answers[3]
        assert refused.header(b"Retry-After") == b"63"  # 1r/m is 16/1000 r/s, as nginx keeps it
        assert refused.header(b"RateLimit") == b'"per-ip";r=0;t=188'
        assert len(backend.requests) == 3


async def test_served_trusted_proxies_and_dry_run(tmp_path: Path) -> None:
    async with Backend() as backend:
        port, trusting, dry = free_ports(3)
        base = ["--upstream", backend.url, "--rate", "1r/m"]
        async with running_distpat("ratelimit", tmp_path, port, ["--listen", f"{HOST}:{port}", *base]):
            spoofed = [await get(port, b"X-Forwarded-For: 10.0.0.%d" % i) for i in range(3)]
        assert [r.status for r in spoofed] == [200, 429, 429]  # a spoofed field changes nothing
        argv = ["--listen", f"{HOST}:{trusting}", *base, "--trusted-proxy", "127.0.0.1/32"]
        async with running_distpat("ratelimit", tmp_path, trusting, argv):
            behind = [await get(trusting, b"X-Forwarded-For: 10.0.0.%d" % i) for i in (1, 2, 1, 3)]
        assert [r.status for r in behind] == [200, 200, 429, 200]  # a bucket per client
        argv = ["--listen", f"{HOST}:{dry}", *base, "--dry-run"]
        async with running_distpat("ratelimit", tmp_path, dry, argv):
            answers = [await get(dry) for _ in range(4)]
        assert [r.status for r in answers] == [200, 200, 200, 200]
        assert len(backend.requests) == 1 + 3 + 4
