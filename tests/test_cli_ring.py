"""`distpat ring ...` as a user runs it: through main(), and once as a real subprocess."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from distpat.cli import main
from distpat.config.twemproxy import load_twemproxy
from distpat.ring import HashRing, MaglevRing, from_twemproxy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nutcracker.yml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_locate_from_a_twemproxy_pool_prints_names_or_host_port(capsys: pytest.CaptureFixture[str]) -> None:
    keys = ["user:1", "{user:42}:a", "{user:42}:b", "ключ"]
    code, out, _ = run(capsys, "ring", "locate", "--twemproxy-config", str(EXAMPLE), "--pool", "alpha", *keys)
    assert code == 0
    pool = load_twemproxy(EXAMPLE)["alpha"]
    ring = from_twemproxy(pool, draw=partial(random.getrandbits, 32))
    labels = {s.ring_name: s.label for s in pool.servers}
    assert out.splitlines() == [f"{k}\t{labels[ring.get_node(k)]}" for k in keys]
    assert {line.split("\t")[1] for line in out.splitlines()} <= {"s1", "s2", "s3"}
    assert out.splitlines()[1].split("\t")[1] == out.splitlines()[2].split("\t")[1]  # same hash tag

    # beta has unnamed servers: printed as host:port
    code, out, _ = run(
        capsys, "ring", "locate", "--twemproxy-config", str(EXAMPLE), "--pool", "beta", "k1", "k2"
    )
    assert {line.split("\t")[1] for line in out.splitlines()} <= {"127.0.0.1:16382", "127.0.0.1:16383"}


def test_locate_reads_keys_from_stdin(
    capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\nb b\r\n\nlast\n\xff\xfe")))
    code = main(["ring", "locate", "--nodes", "x,y=2,z", "--algorithm", "maglev"])
    out = capsysbinary.readouterr().out
    ring = MaglevRing({"x": 1, "y": 2, "z": 1})
    assert code == 0
    # any bytes are a key, echoed as they came
    keys = [b"a", b"b b", b"", b"last", b"\xff\xfe"]
    assert out.splitlines() == [k + b"\t" + ring.get_node(k).encode() for k in keys]


def test_locate_defaults_to_hashring(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "ring", "locate", "--nodes", "a,b,c", "--vnodes", "64", "k")
    assert out == f"k\t{HashRing(['a', 'b', 'c'], vnodes=64).get_node('k')}\n"


def test_stats_shows_shares_and_movement(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ring", "stats", "--nodes", "a,b,c,d", "--keys", "20000", "--add", "e")
    assert code == 0
    assert "HashRing: 4 nodes, 20000 keys, peak/mean" in out
    assert "after the change (5 nodes):" in out
    moved = [line for line in out.splitlines() if line.startswith("keys moved:")]
    assert moved
    assert "  to e: " in out
    assert "█" in out
    assert all(not line.startswith("  to ") or line.startswith("  to e:") for line in out.splitlines())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ring", "locate", "k"], "give exactly one of --twemproxy-config"),
        (["ring", "locate", "--nodes", "a,,b", "k"], "empty node name"),
        (["ring", "locate", "--nodes", "a,a", "k"], "duplicate node name 'a'"),
        (["ring", "locate", "--nodes", "a=0", "k"], "weight must be positive"),
        (["ring", "locate", "--nodes", "a=x", "k"], "weight of 'a' must be a number"),
        (["ring", "locate", "--nodes", "a", "--vnodes", "8", "--algorithm", "jump", "k"], "--vnodes applies"),
        (["ring", "locate", "--nodes", "a", "--hash", "md5", "k"], "--hash applies"),
        (["ring", "locate", "--twemproxy-config", str(EXAMPLE), "k"], "has 2 pools (alpha, beta)"),
        (["ring", "locate", "--twemproxy-config", str(EXAMPLE), "--pool", "gamma", "k"], "no pool 'gamma'"),
        (["ring", "stats", "--nodes", "a", "--remove", "a"], "leave the ring empty"),
        (["ring", "stats", "--nodes", "a", "--keys", "0"], "--keys must be"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.startswith("distpat: error: ")
    assert err.count("\n") == 1


def test_malformed_twemproxy_file_names_pool_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("alpha:\n  listen: 127.0.0.1:22121\n  hash: sha1\n  servers:\n   - 127.0.0.1:6379:1\n")
    code, _, err = run(capsys, "ring", "locate", "--twemproxy-config", str(bad), "k")
    assert code == 2
    assert "pool 'alpha'" in err
    assert "'hash'" in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "ring", "locate", "--twemproxy-config", str(tmp_path / "nope.yml"), "k")
    assert code == 2
    assert "nope.yml" in err


def test_the_installed_command_and_python_m(tmp_path: Path) -> None:
    for argv in ([sys.executable, "-m", "distpat"], [str(Path(sys.executable).parent / "distpat")]):
        if argv[0].endswith("distpat") and not Path(argv[0]).exists():
            continue  # not installed as a script in this environment; `python -m` covers it
        done = subprocess.run(
            [*argv, "ring", "locate", "--nodes", "a,b"],
            input="k1\nk2\n",
            capture_output=True,
            text=True,
            check=True,
        )
        assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["k1", "k2"]
        helped = subprocess.run([*argv, "--help"], capture_output=True, text=True, check=True)
        assert "ring" in helped.stdout


def test_keys_that_are_not_utf8_are_placed_not_crashed_on(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    # os.fsdecode turns the byte 0xff into a lone surrogate, which mmh3 5.x would crash on
    for algorithm in ("hashring", "maglev", "rendezvous", "jump", "ketama", "modula"):
        code = main(["ring", "locate", "--nodes", "a,b", "--algorithm", algorithm, "\udcff"])
        out = capsysbinary.readouterr().out
        assert code == 0
        assert out in (b"\xff\ta\n", b"\xff\tb\n")


def test_flags_that_do_not_apply_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "ring", "locate", "--twemproxy-config", str(EXAMPLE), "--pool", "alpha", "--hash", "md5", "k"
    )
    assert code == 2
    assert "--hash applies to --nodes" in err
    code, _, err = run(capsys, "ring", "locate", "--nodes", "a", "--pool", "alpha", "k")
    assert code == 2
    assert "--pool applies to --twemproxy-config" in err
