"""`distpat shard`'s options (flags, DISTPAT_* variables, a [shard] TOML table), its errors, ``-t``,
and the ``[[stage]] kind = "shard"`` table of a pipeline file.

Configuration is read in-process through :func:`build_shard_config`; ``-t`` runs as a real
``python -m distpat`` process, and binds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distpat.cli import build_parser
from distpat.cli.flags import flag_values
from distpat.config.pipeline import load_pipeline
from distpat.config.shard import SHARD_OPTIONS, build_shard_config, build_shard_stage, parse_shard
from distpat.core.pipeline import Pipeline
from distpat.core.ring import HashRing, MaglevRing, NginxChashRing
from distpat.core.shard_route import ShardStage
from distpat.core.stage import Forward, Request, Tick
from distpat.errors import ConfigError
from distpat.net.upstream import Upstream
from tests.clikit import distpat

HOST = "127.0.0.1"
TICK = Tick(mono=0.0, wall=0.0, rand=0)
SHARDS = [f"http://{HOST}:{port}" for port in (8081, 8082, 8083)]


def parsed(*argv: str, environ: dict[str, str] | None = None, config_file: str | None = None) -> Any:
    args = build_parser().parse_args(["shard", *argv])
    return build_shard_config(
        flag_values(args, SHARD_OPTIONS), environ=environ or {}, config_file=config_file
    )


def upstream_flags(*urls: str) -> list[str]:
    return [w for url in urls for w in ("--upstream", url)]


def the_stage(config: Any) -> ShardStage:
    (stage,) = config.stages
    assert isinstance(stage, ShardStage)
    return stage


def place(stage: ShardStage, target: bytes, fields: dict[bytes, bytes] | None = None) -> Forward:
    effect = stage.on_request(Request(b"GET", target, client=HOST, fields=fields or {}), TICK)
    assert isinstance(effect, Forward)
    return effect


# -- what the options make -------------------------------------------------------------------


def test_the_defaults_shard_by_request_uri_as_nginx_does() -> None:
    config, values = parsed("--listen", ":8080", *upstream_flags(*SHARDS))
    assert config.listen == ("0.0.0.0", 8080)
    assert config.upstreams == tuple(SHARDS)  # the default pool, in order
    stage = the_stage(config)
    assert (stage.name, stage.pool, stage.replicas, stage.balance_factor) == ("shard", None, 1, None)
    assert (stage.key.text, stage.shard_header, values["algorithm"]) == ("uri", None, "nginx")
    nginx = NginxChashRing([f"{HOST}:{p}" for p in (8081, 8082, 8083)])  # as nginx's server lines
    assert isinstance(stage.ring, NginxChashRing)
    assert stage.ring.continuum() == nginx.continuum()
    for i in range(200):
        target = b"/objects/%d?v=%d" % (i, i % 7)
        assert place(stage, target).order == (nginx.get_node(target),)
    # the stage names upstreams as the engine's pool does, so its orders resolve
    assert set(stage.upstreams.values()) == {Upstream(url).name for url in SHARDS}
    assert Pipeline(config.stages).stages == (stage,)


def test_every_shard_option_as_flags() -> None:
    config, _ = parsed(
        "--listen",
        f"{HOST}:8080",
        *upstream_flags(f"{SHARDS[0]},weight=3", SHARDS[1], f"{SHARDS[2]} weight=2"),
        "--key",
        "header:X-User",
        "--algorithm",
        "maglev",
        "--replicas",
        "2",
        "--balance-factor",
        "1.25",
        "--shard-header",
        "X-Shard",
    )
    stage = the_stage(config)
    assert isinstance(stage.ring, MaglevRing)
    assert dict(stage.ring.weights) == {f"{HOST}:8081": 3, f"{HOST}:8082": 1, f"{HOST}:8083": 2}
    assert config.upstreams == tuple(SHARDS)  # the weights are the ring's, not part of the URLs
    assert (stage.replicas, stage.balance_factor, stage.shard_header) == (2, 1.25, b"X-Shard")
    assert stage.reads == frozenset({b"x-user"})
    forward = place(stage, b"/", {b"x-user": b"alice"})
    assert forward.order == tuple(stage.ring.get_nodes(b"alice", 2))
    assert forward.respond == ((b"X-Shard", forward.order[0].encode()),)


def test_names_are_hashed_as_written_and_sent_as_the_pool_names_them() -> None:
    config, _ = parsed("--listen", ":1", *upstream_flags("http://Backend", "http://[::1]:8081/"))
    stage = the_stage(config)
    assert list(stage.ring.nodes) == ["Backend", "[::1]:8081"]  # nginx: server Backend; server [::1]:8081;
    assert stage.upstreams == {"Backend": "backend:80", "[::1]:8081": "::1:8081"}
    assert set(stage.upstreams.values()) == {
        Upstream("http://Backend").name,
        Upstream("http://[::1]:8081/").name,
    }


def test_environment_variables_and_weights_in_them() -> None:
    env = {
        "DISTPAT_LISTEN": ":9000",
        "DISTPAT_UPSTREAM": f"{SHARDS[0]},weight=3,{SHARDS[1]}, {SHARDS[2]},weight=2",
        "DISTPAT_KEY": "cookie:sid",
        "DISTPAT_ALGORITHM": "hashring",
        "DISTPAT_REPLICAS": "3",
        "DISTPAT_BALANCE_FACTOR": "2",
        "DISTPAT_SHARD_HEADER": "X-Served-Shard",
    }
    config, _ = parsed(environ=env)
    stage = the_stage(config)
    assert config.upstreams == tuple(SHARDS)
    assert isinstance(stage.ring, HashRing)
    assert dict(stage.ring.weights) == {f"{HOST}:8081": 3, f"{HOST}:8082": 1, f"{HOST}:8083": 2}
    assert (stage.key.text, stage.replicas, stage.balance_factor) == ("cookie:sid", 3, 2.0)
    assert stage.shard_header == b"X-Served-Shard"
    flagged, _ = parsed("--replicas", "1", environ=env)  # a flag wins over its variable
    assert the_stage(flagged).replicas == 1


@pytest.mark.parametrize("table", ["[shard]\n", ""])
def test_a_toml_file_top_level_or_shard_table(tmp_path: Path, table: str) -> None:
    path = tmp_path / "shard.toml"
    path.write_text(
        f'{table}listen = "{HOST}:8080"\n'
        f'upstream = ["{SHARDS[0]},weight=2", "{SHARDS[1]}"]\n'
        'key = "query:id"\nalgorithm = "rendezvous"\nreplicas = 2\nbalance_factor = 1.5\n'
        'shard_header = "X-Shard"\nadmin = "127.0.0.1:9901"\n'
    )
    config, _ = parsed(config_file=str(path))
    stage = the_stage(config)
    assert config.upstreams == tuple(SHARDS[:2])
    assert config.admin == (HOST, 9901)
    assert dict(stage.ring.weights) == {f"{HOST}:8081": 2, f"{HOST}:8082": 1}
    assert (stage.key.text, stage.replicas, stage.balance_factor) == ("query:id", 2, 1.5)
    path.write_text(f'[shard]\nlisten = ":1"\nupstream = ["{SHARDS[0]}"]\nbalance_factor = 3\n')
    assert the_stage(parsed(config_file=str(path))[0]).balance_factor == 3.0


def test_parse_shard() -> None:
    shard = parse_shard("http://10.0.0.1:8081,weight=4", "--upstream")
    assert (shard.url, shard.ring_name, shard.upstream, shard.weight) == (
        "http://10.0.0.1:8081",
        "10.0.0.1:8081",
        "10.0.0.1:8081",
        4,
    )
    assert parse_shard("  http://h:1  WEIGHT=2 ", "x").weight == 2
    assert parse_shard("http://h", "x").upstream == "h:80"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no shard: give --upstream http://HOST:PORT"),
        (
            ["--upstream", "http://h:1,weight=0"],
            "--upstream: 'http://h:1,weight=0': weight must be at least 1",
        ),
        (["--upstream", "http://h:1,weight=x"], "weight must be a whole number, not 'x'"),
        (
            ["--upstream", "http://h:1,max_fails=2"],
            "unknown parameter 'max_fails=2' (a shard takes weight=N only)",
        ),
        (["--upstream", "https://h:1"], "only http:// upstreams are supported"),
        (["--upstream", "http://h:1/path"], "give scheme, host and port only"),
        (["--upstream", "http://h:1", "--upstream", "http://h:1"], "are the same upstream (h:1)"),
        (["--upstream", "http://h:80", "--upstream", "http://h"], "are the same upstream (h:80)"),
        (["--upstream", "http://h:1", "--replicas", "2"], "--replicas 2 is more than the number of shards"),
        (["--upstream", "http://h:1", "--replicas", "0"], "--replicas must be at least 1, not 0"),
        (["--upstream", "http://h:1", "--algorithm", "md5"], "--algorithm must be one of hashring, ketama"),
        (["--upstream", "http://h:1", "--key", "ip"], "--key: key source 'ip': use one of uri, path"),
        (["--upstream", "http://h:1", "--key", "header:"], "needs a name made of token characters"),
        (
            ["--upstream", "http://h:1", "--balance-factor", "0.9"],
            "--balance-factor must be at least 1, not '0.9'",
        ),
        (["--upstream", "http://h:1", "--balance-factor", "lots"], "--balance-factor must be a number"),
        (["--upstream", "http://h:1", "--balance-factor", "inf"], "--balance-factor must be a finite number"),
        (
            ["--upstream", "http://h:1", "--balance-factor", "2e6"],
            "the balance factor must be from 1 to 1000000",
        ),
        (["--upstream", "http://h:1", "--shard-header", "X Shard"], "--shard-header must be a field name"),
        (
            ["--upstream", "http://h:1,weight=2", "--upstream", "http://h:2", "--algorithm", "jump"],
            "algorithm jump: jump hash does not support weights",
        ),
    ],
)
def test_clear_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parsed("--listen", ":1", *argv)
    assert message in str(caught.value)


def test_no_listen_address() -> None:
    with pytest.raises(ConfigError, match="no listen address"):
        parsed("--upstream", SHARDS[0])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("balance_factor = true", "balance_factor must be a number, not a boolean (true)"),
        ('balance_factor = "1.5"', "balance_factor must be a number, not a string ('1.5')"),
        ('replicas = "2"', "replicas must be an integer"),
        ("replica = 2", "unknown option 'replica' in [shard] (did you mean 'replicas'?)"),
    ],
)
def test_toml_errors_name_the_file_and_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[shard]\nlisten = ":1"\nupstream = ["{SHARDS[0]}"]\n{line}\n')
    with pytest.raises(ConfigError) as caught:
        parsed(config_file=str(path))
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


# -- -t ----------------------------------------------------------------------------------------------


def test_t_checks_everything_and_binds_nothing(tmp_path: Path, held_port: int) -> None:
    done = distpat(
        "shard",
        "-t",
        "--listen",
        f"{HOST}:{held_port}",
        *upstream_flags(f"{SHARDS[0]},weight=2", SHARDS[1]),
        "--replicas",
        "2",
        "--balance-factor",
        "1.25",
        "--shard-header",
        "X-Shard",
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "configuration OK\n", ""), done
    good = tmp_path / "shard.toml"
    good.write_text(f'[shard]\nlisten = "{HOST}:{held_port}"\nupstream = ["{SHARDS[0]}"]\nkey = "path"\n')
    done = distpat("shard", "--test-config", "--config", str(good))
    assert (done.returncode, done.stdout) == (0, "configuration OK\n"), done
    done = distpat("shard", "-t", "--config", str(good), env={"DISTPAT_REPLICAS": "2"})
    assert done.returncode == 2, done
    assert done.stderr == "distpat: error: --replicas 2 is more than the number of shards (--upstream), 1\n"
    done = distpat("shard", "-t", "--listen", ":1", "--upstream", f"{SHARDS[0]},weight=-1")
    assert done.returncode == 2, done
    assert done.stderr.startswith("distpat: error: --upstream: ")
    assert done.stderr.count("\n") == 1


def test_the_command_is_listed() -> None:
    done = distpat("--help")
    assert done.returncode == 0
    assert "shard" in done.stdout.split("COMMAND", 1)[1]


# -- a pipeline file's [[stage]] table ------------------------------------------------------------

POOLS = {"default": (SHARDS[0],), "users": tuple(SHARDS)}


def test_a_stage_table_over_a_named_pool() -> None:
    stage = build_shard_stage(
        {
            "kind": "shard",
            "name": "users",
            "pool": "users",
            "key": "header:X-User",
            "replicas": 2,
            "balance_factor": 1.25,
            "shard_header": "X-Shard",
            "weights": {SHARDS[2]: 3},
        },
        POOLS,
        "site.toml: [[stage]] 1",
    )
    assert isinstance(stage, ShardStage)
    assert (stage.name, stage.pool, stage.pools, stage.replicas) == ("users", "users", ("users",), 2)
    assert dict(stage.ring.weights) == {f"{HOST}:8081": 1, f"{HOST}:8082": 1, f"{HOST}:8083": 3}
    assert place(stage, b"/", {b"x-user": b"u1"}).pool == "users"
    default = build_shard_stage({"kind": "shard"}, POOLS, "site.toml: [[stage]] 2")
    assert isinstance(default, ShardStage)
    assert (default.pool, default.pools, list(default.ring.nodes)) == (None, (), [f"{HOST}:8081"])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"pool": "nope"}, "pool 'nope' is not configured (pools: default, users)"),
        ({"replica": 2}, "unknown key 'replica' (a shard stage takes kind, name, pool"),
        ({"replicas": "2"}, "replicas must be an integer, not '2'"),
        ({"replicas": True}, "replicas must be an integer, not True"),
        ({"pool": "users", "replicas": 4}, "replicas 4 is more than the number of shards, 3"),
        ({"balance_factor": "x"}, "balance_factor must be a number, not 'x'"),
        ({"balance_factor": 0.5}, "the balance factor must be from 1 to 1000000"),
        ({"weights": {"http://elsewhere:1": 2}}, "weights: 'http://elsewhere:1' is not an upstream of pool"),
        ({"weights": {SHARDS[0]: 0}}, "must be a whole number of at least 1, not 0"),
        ({"weights": []}, "weights must be a table"),
        ({"key": "ip"}, "key: key source 'ip': use one of"),
        ({"algorithm": "md5"}, "algorithm must be one of hashring"),
        ({"shard_header": "bad header"}, "shard_header must be a field name"),
        ({"kind": "split"}, "kind is 'split', not 'shard'"),
    ],
)
def test_stage_table_errors_name_the_file_and_table(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_shard_stage(table, POOLS, "site.toml: [[stage]] 3")
    text = str(caught.value)
    assert text.startswith("site.toml: [[stage]] 3: "), text
    assert message in text


def test_a_pipeline_file_with_a_shard_stage(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        f'listen = "{HOST}:8080"\nupstream = ["{SHARDS[0]}"]\n'
        f'[pools.users]\nupstreams = ["{SHARDS[0]}", "{SHARDS[1]}", "{SHARDS[2]}"]\n'
        '[[stage]]\nkind = "shard"\nname = "users"\npool = "users"\nkey = "header:X-User"\nreplicas = 2\n'
        f'weights = {{ "{SHARDS[1]}" = 2 }}\n'
    )
    config, _ = load_pipeline(str(path), environ={})
    (stage,) = config.stages
    assert isinstance(stage, ShardStage)
    assert (stage.name, stage.pool, stage.replicas) == ("users", "users", 2)
    assert dict(stage.ring.weights) == {f"{HOST}:8081": 1, f"{HOST}:8082": 2, f"{HOST}:8083": 1}
    assert dict(config.pools)["users"] == tuple(SHARDS)
    path.write_text(
        f'listen = "{HOST}:8080"\nupstream = ["{SHARDS[0]}"]\n[[stage]]\nkind = "shard"\nreplica = 2\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(str(path), environ={})
    assert str(caught.value).startswith(f"{path}: [[stage]] 1 (kind = 'shard'), key 'replica': unknown key")
    assert "did you mean 'replicas'?" in str(caught.value)
