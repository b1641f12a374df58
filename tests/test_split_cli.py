"""`distpat split` and `distpat run`: options from flags, DISTPAT_* variables and TOML, their errors, -t.

The option tables are read in-process (build_split_config, load_pipeline); -t runs real
``python -m distpat`` processes and binds nothing (it passes while the test holds the port it names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distpat.cli import build_parser
from distpat.cli.flags import flag_values
from distpat.config.proxy import OPTIONS
from distpat.config.split import SPLIT_OPTIONS, build_split_config
from distpat.core.split_stage import DEFAULT_COOKIE_MAX_AGE, SplitStage
from distpat.core.stage import Request, Tick
from distpat.errors import ConfigError
from tests.clikit import distpat
from tests.test_cli_serving import assert_error, assert_ok

HOST = "127.0.0.1"
A, B, C, M = (f"http://{HOST}:{port}" for port in (8081, 8082, 8083, 8090))
BASE = ["--listen", f"{HOST}:8080", "--variant", f"new:10:{A}", "--variant", f"old:*:{B}"]


def parsed(*argv: str, environ: dict[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    args = build_parser().parse_args(["split", *argv])
    return build_split_config(
        flag_values(args, SPLIT_OPTIONS), environ=environ or {}, config_file=args.config
    )


def the_stage(config: Any) -> SplitStage:
    (stage,) = config.stages
    assert isinstance(stage, SplitStage)
    return stage


# --- what the flags make -----------------------------------------------------------------------------


def test_each_variant_is_a_pool_and_a_repeated_name_adds_a_server() -> None:
    config, values = parsed(*BASE, "--variant", f"old::{C}", "--key", "header:X-User", "--workers", "2")
    assert config.upstreams == ()
    assert config.pools == (("new", (A,)), ("old", (B, C)))
    assert config.listen == (HOST, 8080)
    assert config.reuse_port  # a proxy flag, with its proxy meaning
    assert values["workers"] == 2
    stage = the_stage(config)
    assert stage.name == "split"
    assert stage.variants() == (("new", "10"), ("old", "90"))
    assert stage.pools == ("new", "old")
    assert stage.key.text == "header:X-User"
    assert stage.cookie is None
    assert (stage.override_header, stage.variant_header, stage.mirror_pool) == (None, None, None)
    request = Request(b"GET", b"/", client="c", fields={b"x-user": b"alice"})
    assert stage.on_request(request, Tick(0, 0, 0)).pool in ("new", "old")


def test_the_experiment_flags_reach_the_stage() -> None:
    config, _ = parsed(
        *BASE,
        "--cookie",
        "sid",
        "--cookie-max-age",
        "7d",
        "--override-header",
        "X-Force-Variant",
        "--variant-header",
        "X-Variant",
        "--keyless-variant",
        "old",
        "--mirror",
        M,
        "--mirror-percent",
        "2.5",
        "--mirror-max-in-flight",
        "8",
        "--max-fails",
        "5",
    )
    stage = the_stage(config)
    assert stage.key.text == "cookie:sid"
    assert stage.cookie is not None
    assert stage.cookie.max_age == 7 * 86400
    assert stage.override_header == b"x-force-variant"
    assert stage.variant_header == b"X-Variant"
    assert stage.keyless == "old"
    assert (stage.mirror_pool, stage.mirror_share) == ("mirror", 250)
    assert config.pools[-1] == ("mirror", (M,))
    assert stage.pools == ("new", "old", "mirror")
    assert config.mirror_max_in_flight == 8
    assert config.policy.max_fails == 5
    # --key cookie:NAME is the same as --cookie NAME, and both may be given when they agree
    for flags in (["--key", "cookie:sid"], ["--key", "cookie:sid", "--cookie", "sid"]):
        stage = the_stage(parsed(*BASE, *flags)[0])
        assert stage.cookie is not None
        assert stage.cookie.max_age == DEFAULT_COOKIE_MAX_AGE


def test_environment_and_a_split_table_give_the_same_options(tmp_path: Path) -> None:
    env = {
        "DISTPAT_LISTEN": f"{HOST}:8080",
        "DISTPAT_VARIANT": f"new:10:{A},old:*:{B},old::{C}",
        "DISTPAT_KEY": "query:uid",
        "DISTPAT_MIRROR": M,
        "DISTPAT_MIRROR_PERCENT": "1",
    }
    from_env, _ = parsed(environ=env)
    toml = tmp_path / "split.toml"
    toml.write_text(
        f'[split]\nlisten = "{HOST}:8080"\nvariant = ["new:10:{A}", "old:*:{B}", "old::{C}"]\n'
        f'key = "query:uid"\nmirror = "{M}"\nmirror_percent = "1"\nheader_timeout = "5s"\n'
    )
    from_file, _ = parsed("--config", str(toml))
    for config in (from_env, from_file):
        assert config.pools == (("new", (A,)), ("old", (B, C)), ("mirror", (M,)))
        stage = the_stage(config)
        assert (stage.key.text, stage.mirror_share) == ("query:uid", 100)
    assert from_file.settings.header_timeout == 5.0
    # a flag wins over the variable, which wins over the file
    flagged, _ = parsed("--config", str(toml), "--key", "ip", environ={"DISTPAT_MIRROR_PERCENT": "3"})
    assert (the_stage(flagged).key.text, the_stage(flagged).mirror_share) == ("ip", 300)


def test_every_proxy_flag_but_upstream_is_a_split_flag() -> None:
    names = {o.name for o in SPLIT_OPTIONS}
    assert {o.name for o in OPTIONS} - names == {"upstream"}
    assert len(names) == len(SPLIT_OPTIONS)


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", ":1", "--key", "ip"], "no variant: give --variant NAME:PERCENT:URL"),
        ([*BASE], "no key: give --key SOURCE (header:NAME, cookie:NAME, query:NAME or ip) or --cookie NAME"),
        ([*BASE, "--key", "uri"], "key source 'uri': use one of ip, header:NAME, cookie:NAME, query:NAME"),
        ([*BASE, "--key", "header:"], "header: needs a name made of token characters"),
        ([*BASE, "--cookie", "a b"], "--cookie must be a cookie name"),
        ([*BASE, "--key", "ip", "--cookie", "sid"], "--cookie sid keys by that cookie, but --key says 'ip'"),
        (["--listen", ":1", "--key", "ip", "--variant", "new"], "--variant must be NAME:PERCENT:URL"),
        (["--listen", ":1", "--key", "ip", "--variant", f"new:1.234:{A}"], "more than two decimals"),
        (["--listen", ":1", "--key", "ip", "--variant", "new:10:ftp://x"], "--variant 'new:10:ftp://x'"),
        (["--listen", ":1", "--key", "ip", "--variant", f"n w:10:{A}"], "variant name 'n w' must be"),
        (["--listen", ":1", "--key", "ip", "--variant", f"new:10:{A}"], "under 100%, and no line is '*'"),
        ([*BASE, "--key", "ip", "--variant", f"new:20:{C}"], "'new' was given 10 before"),
        ([*BASE, "--key", "ip", "--variant", f"new::{A}"], f"{A} is in 'new''s pool already"),
        (
            ["--listen", ":1", "--key", "ip", "--variant", f"a::{A}"],
            "the first --variant of 'a' needs its share",
        ),
        ([*BASE, "--key", "ip", "--variant", f"x:5:{C}"], "'*' (the rest) must be the last line"),
        (["--listen", ":1", "--key", "ip", "--variant", f"a:60:{A}", "--variant", f"b:50:{B}"], "over 100%"),
        ([*BASE, "--key", "ip", "--mirror", M], "--mirror needs --mirror-percent P"),
        ([*BASE, "--key", "ip", "--mirror-percent", "5"], "--mirror-percent needs --mirror URL"),
        ([*BASE, "--key", "ip", "--mirror", M, "--mirror-percent", "0"], "--mirror-percent: percentage '0'"),
        (
            [*BASE, "--key", "ip", "--keyless-variant", "beta"],
            "--keyless-variant beta: no --variant is named",
        ),
        ([*BASE, "--key", "ip", "--override-header", "X:Y"], "--override-header must be a field name"),
        ([*BASE, "--key", "ip", "--cookie-max-age", "soon"], "--cookie-max-age must be a duration"),
        (
            [
                "--listen",
                ":1",
                "--key",
                "ip",
                "--variant",
                f"mirror:*:{A}",
                "--mirror",
                M,
                "--mirror-percent",
                "1",
            ],
            "a variant named 'mirror'",
        ),
    ],
)
def test_bad_flags_say_what_is_wrong(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parsed(*argv)
    assert message in str(info.value)


def test_the_environment_and_the_file_are_named_in_their_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DISTPAT_VARIANT must be NAME:PERCENT:URL"):
        parsed(environ={"DISTPAT_LISTEN": ":1", "DISTPAT_VARIANT": "nope"})
    toml = tmp_path / "split.toml"
    toml.write_text('[split]\nlisten = ":1"\nvariant = "new:10:http://127.0.0.1:1"\nkey = 7\n')
    with pytest.raises(ConfigError, match=rf"{toml}: key must be a string, not an integer"):
        parsed("--config", str(toml))
    toml.write_text('[split]\nlisten = ":1"\nvariants = []\n')
    with pytest.raises(
        ConfigError, match=r"unknown option 'variants' in \[split\] \(did you mean 'variant'\?\)"
    ):
        parsed("--config", str(toml))


# --- -t, as an operator runs it ---------------------------------------------------------------------------


def test_split_t_checks_flags_and_files_and_binds_nothing(tmp_path: Path, held_port: int) -> None:
    argv = ["--listen", f"{HOST}:{held_port}", "--variant", f"new:10:{A}", "--variant", f"old:*:{B}"]
    assert_ok(distpat("split", "-t", *argv, "--cookie", "sid", "--admin", f"{HOST}:{held_port}"))
    good = tmp_path / "split.toml"
    good.write_text(
        f'[split]\nlisten = "{HOST}:{held_port}"\nvariant = ["a:50:{A}", "b:*:{B}"]\nkey = "ip"\n'
    )
    assert_ok(distpat("split", "--test-config", "--config", str(good)))
    assert_ok(distpat("split", "-t", env={"DISTPAT_CONFIG": str(good)}))
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[split]\nlisten = "{HOST}:1"\nvariant = ["a:50:{A}", "b:40:{B}"]\nkey = "ip"\n')
    assert_error(distpat("split", "-t", "--config", str(bad)), "the percentages total 90%, under 100%")
    assert_error(distpat("split", "-t", *argv), "no key: give --key SOURCE")
    assert_error(
        distpat("split", "-t", *argv, "--key", "ip", "--mirror", M), "--mirror needs --mirror-percent"
    )


def test_run_t_checks_a_pipeline_file_and_binds_nothing(tmp_path: Path, held_port: int) -> None:
    good = tmp_path / "pipeline.toml"
    good.write_text(
        f'listen = "{HOST}:{held_port}"\nadmin = "{HOST}:{held_port}"\n'
        f'[pools.new]\nupstreams = ["{A}"]\n[pools.old]\nupstreams = ["{B}", "{C}"]\n'
        '[[stage]]\nkind = "split"\nkey = "header:X-User"\n'
        'variants = [{ name = "new", percent = 10 }, { name = "old", percent = "*" }]\n'
    )
    assert_ok(distpat("run", "-t", "--config", str(good)))
    assert_ok(distpat("run", "-t", env={"DISTPAT_CONFIG": str(good)}))
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('percent = "*"', 'percent = "*", pool = "beta"'))
    assert_error(
        distpat("run", "-t", "--config", str(bad)),
        f"{bad}: [[stage]] 1 (kind = 'split'), key 'variants[1].pool': no pool 'beta'",
    )
    assert_error(distpat("run", "-t"), "no pipeline file: give --config FILE")
    assert_error(distpat("run", "-t", "--config", str(tmp_path / "none.toml")), "none.toml: cannot read")


def test_help_lists_the_new_commands() -> None:
    done = distpat("--help")
    assert done.returncode == 0
    assert "split" in done.stdout
    assert "run" in done.stdout
    text = distpat("split", "--help").stdout
    for flag in ("--variant NAME:PERCENT:URL", "--cookie NAME", "--mirror-percent P", "--max-fails N"):
        assert flag in text
    assert "--upstream " not in text
    kinds = " ".join(distpat("run", "--help").stdout.split()).partition("(kinds: ")[2].partition(")")[0]
    assert "split" in kinds.split(", ")
