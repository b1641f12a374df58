"""distpat.config.pipeline: the pipeline file of `distpat run` (options, [pools.NAME], [[stage]]) and
the registry of stage kinds; every refusal names the file, the table and the key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distpat.config.pipeline import PIPELINE_OPTIONS, load_pipeline
from distpat.config.stages import STAGE_KINDS, StageTable, build_stage, register
from distpat.core.split_stage import SplitStage
from distpat.core.stage import Request, Stage, Tick
from distpat.errors import ConfigError

A, B, C = "http://127.0.0.1:8081", "http://127.0.0.1:8082", "http://127.0.0.1:8083"
POOLS = f'[pools.new]\nupstreams = ["{A}"]\n[pools.old]\nupstreams = ["{B}", "{C}"]\n'
SPLIT = (
    '[[stage]]\nkind = "split"\nkey = "header:X-User"\n'
    'variants = [{ name = "new", percent = 10 }, { name = "old", percent = "*" }]\n'
)
GOOD = f'listen = "127.0.0.1:8080"\n{POOLS}{SPLIT}'


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return load_pipeline(str(path), environ=environ or {})


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'pipeline.toml'}: "), message
    return message.removeprefix(f"{tmp_path / 'pipeline.toml'}: ")


# --- what a file makes ----------------------------------------------------------------------------


def test_a_pipeline_file_makes_pools_and_stages(tmp_path: Path) -> None:
    config, values = load(
        tmp_path,
        'listen = "127.0.0.1:8080"\nadmin = "127.0.0.1:9901"\nworkers = 2\nheader_timeout = "5s"\n'
        f'mirror_max_in_flight = 16\nbalance = "least_outstanding"\n{POOLS}'
        '[pools.shadow]\nupstreams = ["http://127.0.0.1:8090"]\nbalance = "least_outstanding"\n'
        '[[stage]]\nkind = "split"\nname = "checkout"\ncookie = "sid"\ncookie_max_age = "1h"\n'
        'variant_header = "X-Variant"\noverride_header = "X-Force"\nmirror = "shadow"\n'
        'mirror_percent = 0.5\nkeyless_variant = "a"\n'
        'variants = [{ name = "b", percent = 10, pool = "new" },'
        ' { name = "a", percent = 5.25, pool = "old" }, { name = "b", percent = "*", pool = "new" }]\n',
    )
    assert config.listen == ("127.0.0.1", 8080)
    assert config.admin == ("127.0.0.1", 9901)
    assert config.upstreams == ()
    assert config.pools == (("new", (A,)), ("old", (B, C)), ("shadow", ("http://127.0.0.1:8090",)))
    assert config.balance == "least_outstanding"
    assert config.mirror_max_in_flight == 16
    assert config.settings.header_timeout == 5.0
    assert values["workers"] == 2
    (stage,) = config.stages
    assert isinstance(stage, SplitStage)
    assert stage.name == "checkout"
    assert stage.variants() == (("b", "10"), ("a", "5.25"), ("b", "84.75"))
    assert stage.variant_pools == {"b": "new", "a": "old"}
    assert stage.pools == ("new", "old", "shadow")
    assert stage.cookie is not None
    assert stage.cookie.max_age == 3600
    assert (stage.variant_header, stage.override_header) == (b"X-Variant", b"x-force")
    assert (stage.mirror_pool, stage.mirror_share, stage.keyless) == ("shadow", 50, "a")


def test_the_default_pool_and_the_environment(tmp_path: Path) -> None:
    config, _ = load(tmp_path, f'listen = ":8080"\nupstream = ["{A}"]\n')
    assert (config.upstreams, config.pools, config.stages) == ((A,), (), ())
    config, _ = load(tmp_path, f'listen = ":8080"\n[pools.default]\nupstreams = ["{B}"]\n{POOLS}{SPLIT}')
    assert config.upstreams == (B,)
    assert [name for name, _ in config.pools] == ["new", "old"]
    # a stage may name the default pool
    config, _ = load(
        tmp_path,
        f'listen = ":8080"\nupstream = ["{C}"]\n{POOLS}'
        + SPLIT.replace('percent = "*" }', 'percent = "*", pool = "default" }'),
    )
    assert config.stages[0].variant_pools == {"new": "new", "old": "default"}
    # DISTPAT_* variables win over the file's options
    config, values = load(
        tmp_path, GOOD, environ={"DISTPAT_LISTEN": "127.0.0.1:9999", "DISTPAT_WORKERS": "3"}
    )
    assert config.listen == ("127.0.0.1", 9999)
    assert values["workers"] == 3


def test_stages_keep_their_order_and_their_names(tmp_path: Path) -> None:
    second = SPLIT.replace('key = "header:X-User"', 'name = "by-ip"\nkey = "ip"')
    config, _ = load(tmp_path, GOOD + second)
    assert [s.name for s in config.stages] == ["split-1", "by-ip"]  # KIND-N when not named
    request = Request(b"GET", b"/", client="192.0.2.1", fields={b"x-user": b"u"})
    for stage in config.stages:
        stage.on_request(request, Tick(0, 0, 0))
    assert set(request.notes) == {"split-1", "by-ip"}
    assert [s.name for s in load(tmp_path, GOOD + SPLIT)[0].stages] == ["split-1", "split-2"]


def test_the_options_are_the_proxys_and_the_mirror_bound() -> None:
    names = [o.name for o in PIPELINE_OPTIONS]
    assert "upstream" in names
    assert "mirror_max_in_flight" in names
    assert len(names) == len(set(names))


# --- refusals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # the top level
        ("listne = 1\n" + GOOD, "unknown option 'listne' (did you mean 'listen'?)"),
        (GOOD + "[pool.x]\nupstreams = []\n", "unknown table [pool] (did you mean 'pools'?)"),
        (GOOD + '[[stages]]\nkind = "split"\n', "unknown table [stages] (did you mean 'stage'?)"),
        (GOOD.replace('listen = "127.0.0.1:8080"', "listen = 8080"), "listen must be a string"),
        ('listen = ":1"\npools = 3\n', "pools must be tables, [pools.NAME]"),
        ('listen = ":1"\n', "nothing to forward to"),
        (f'listen = ":1"\n{POOLS}', "nothing to forward to"),
        (f'listen = ":1"\nupstream = ["{A}"]\n[pools.default]\nupstreams = ["{B}"]\n', "both upstream and"),
        # pools
        (
            GOOD + '[pools."a b"]\nupstreams = ["http://127.0.0.1:1"]\n',
            "[pools.a b]: pool name 'a b' must be",
        ),
        (
            GOOD + "[pools.x]\nupstream = []\n",
            "[pools.x]: unknown key 'upstream' (did you mean 'upstreams'?)",
        ),
        (GOOD + "[pools.x]\n", "[pools.x], key 'upstreams': needs an array of upstream URLs"),
        (GOOD + "[pools.x]\nupstreams = []\n", "[pools.x], key 'upstreams': needs an array"),
        (GOOD + "[pools.x]\nupstreams = [1]\n", "[pools.x], key 'upstreams': needs an array"),
        (GOOD + '[pools.x]\nupstreams = ["ftp://h:1"]\n', "[pools.x], key 'upstreams': "),
        (
            GOOD + f'[pools.x]\nupstreams = ["{A}", "{A}"]\n',
            f"[pools.x], key 'upstreams': {A} is listed twice",
        ),
        (
            GOOD + f'[pools.x]\nupstreams = ["{A}"]\nbalance = "random"\n',
            "[pools.x], key 'balance' must be one of",
        ),
        # the stage tables
        (
            GOOD + "[[stage]]\nname = 'x'\n",
            '[[stage]] 2: needs kind = "..." (one of cache, ratelimit, scatter, shard, split)',
        ),
        (
            GOOD + "[[stage]]\nkind = 'splt'\n",
            "[[stage]] 2 (kind = 'splt'), key 'kind': no stage kind 'splt' (did you mean 'split'?)",
        ),
        (
            GOOD.replace("variants =", "variant ="),
            "[[stage]] 1 (kind = 'split'), key 'variant': unknown key (did you mean 'variants'?)",
        ),
        (GOOD.replace('kind = "split"', 'kind = "split"\nname = 3'), "key 'name': must be a string, not 3"),
        (
            GOOD.replace('kind = "split"', 'kind = "split"\nname = "a b"'),
            "key 'name': stage name 'a b' must be",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    assert message in refused(tmp_path, text)


def test_two_stages_may_not_share_a_name(tmp_path: Path) -> None:
    named = SPLIT.replace('kind = "split"', 'kind = "split"\nname = "exp"')
    assert (
        "[[stage]] 2 (kind = 'split', name = 'exp'), key 'name': 'exp' is the name of [[stage]] 1 already"
        in (refused(tmp_path, GOOD.replace(SPLIT, named) + named))
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("variants = [", "variants = 3 #["), "key 'variants': needs an array of variants"),
        (("variants = [", "variants = [] #"), "key 'variants': needs an array of variants"),
        (('{ name = "new", percent = 10 }', '"new"'), "key 'variants[0]': must be a table"),
        (("percent = 10 }", "percent = 10, share = 1 }"), "key 'variants[0].share': unknown key"),
        (('name = "new", ', ""), "key 'variants[0].name': needs the variant's name"),
        ((", percent = 10 }", " }"), "key 'variants[0].percent': needs the variant's share"),
        (("percent = 10 }", "percent = true }"), "key 'variants[0].percent': must be a percentage"),
        (("percent = 10 }", "percent = 1.234 }"), "more than two decimals"),
        (
            ("percent = 10 }", "percent = 100 }"),
            "[[stage]] 1 (kind = 'split'): split variant 'old': '*' would get no traffic",
        ),
        (
            ('percent = "*" }', "percent = 80 }"),
            "[[stage]] 1 (kind = 'split'): split: the percentages total 90%",
        ),
        (("percent = 10 }", 'percent = 10, pool = "nope" }'), "key 'variants[0].pool': no pool 'nope'"),
        (("percent = 10 }", "percent = 10, pool = 1 }"), "key 'variants[0].pool': must name a pool"),
        (('name = "new"', 'name = "a.b!"'), "key 'variants[0].name': variant name 'a.b!' must be"),
        (('key = "header:X-User"', 'key = "uri"'), "key 'key': key source 'uri': use one of"),
        (('key = "header:X-User"', "key = 1"), "key 'key' must be a string, not an integer (1)"),
        (('key = "header:X-User"', ""), "key 'key': no key: give key SOURCE"),
        (('key = "header:X-User"', 'key = "ip"\ncookie = "sid"'), "cookie sid keys by that cookie"),
        (('key = "header:X-User"', 'cookie = "s d"'), "key 'cookie' must be a cookie name"),
        (
            ('key = "header:X-User"', 'cookie = "s"\ncookie_max_age = true'),
            "key 'cookie_max_age' must be a number",
        ),
        (('kind = "split"', 'kind = "split"\nmirror = "new"'), "key 'mirror_percent': a mirror needs both"),
        (('kind = "split"', 'kind = "split"\nmirror_percent = 5'), "key 'mirror': a mirror needs both"),
        (('kind = "split"', 'kind = "split"\nmirror = "x"\nmirror_percent = 5'), "key 'mirror': no pool 'x'"),
        (('kind = "split"', 'kind = "split"\nmirror = "new"\nmirror_percent = "*"'), "not '*'"),
        (('kind = "split"', 'kind = "split"\nkeyless_variant = "beta"'), "key 'keyless_variant': no variant"),
        (('kind = "split"', 'kind = "split"\noverride_header = 5'), "key 'override_header' must be a string"),
        (
            ('kind = "split"', 'kind = "split"\nvariant_header = "X Y"'),
            "key 'variant_header' must be a field",
        ),
    ],
)
def test_a_bad_split_table_is_refused_naming_its_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GOOD
    got = refused(tmp_path, GOOD.replace(old, new, 1))
    assert got.startswith("[[stage]] 1 (kind = 'split')"), got
    assert message in got, got


def test_toml_errors_name_the_file(tmp_path: Path) -> None:
    assert refused(tmp_path, "listen = \n").startswith("invalid TOML")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'none.toml'}: cannot read")):
        load_pipeline(str(tmp_path / "none.toml"))


# --- the registry ----------------------------------------------------------------------------------------


class _Probe(Stage):
    kind = "probe"

    def __init__(self, pool: str) -> None:
        self.pools = (pool,)


def _build_probe(table: StageTable) -> Stage:
    pool = table.text("pool")
    if pool is None:
        raise ConfigError("probe: needs a pool")
    return _Probe(pool)


@pytest.fixture
def probe_kind() -> Iterator[None]:
    register("probe", _build_probe, keys=("pool",), summary="a test kind")
    try:
        yield
    finally:
        del STAGE_KINDS["probe"]


def test_a_kind_registers_itself_and_the_pipeline_checks_the_pools_it_uses(
    tmp_path: Path, probe_kind: None
) -> None:
    config, _ = load(tmp_path, f'{GOOD}[[stage]]\nkind = "probe"\nname = "p"\npool = "new"\n')
    assert [type(s).__name__ for s in config.stages] == ["SplitStage", "_Probe"]
    assert config.stages[1].name == "p"
    assert "[[stage]] 2 (kind = 'probe'): uses pool 'gone', which no [pools.gone] table defines" in refused(
        tmp_path, f'{GOOD}[[stage]]\nkind = "probe"\npool = "gone"\n'
    )
    # a builder's plain ConfigError is given the table's place
    assert "[[stage]] 2 (kind = 'probe'): probe: needs a pool" in refused(
        tmp_path, f'{GOOD}[[stage]]\nkind = "probe"\n'
    )
    assert "key 'pool': must be a string, not 3" in refused(
        tmp_path, f'{GOOD}[[stage]]\nkind = "probe"\npool = 3\n'
    )
    register("probe", _build_probe, keys=("pool",))  # the same builder again: fine
    with pytest.raises(ValueError, match="registered already"):
        register("probe", lambda t: _Probe("x"), keys=())
    assert "split" in STAGE_KINDS
    table = StageTable("f.toml", 1, "probe", "", {"pool": "new"}, {"new": (A,)})
    assert build_stage(table).pools == ("new",)


def test_a_pool_has_its_own_balance(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD + f'[pools.x]\nupstreams = ["{A}"]\nbalance = "least_outstanding"\n')
    config, _ = load_pipeline(str(path), environ={})
    assert dict(config.pool_balance) == {"x": "least_outstanding"}
    assert config.balance == "round_robin"
