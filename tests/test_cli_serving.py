"""The serving commands as operators run them: ``-t``, the log flags, redis-shard's nutcracker habits.

Real ``python -m distpat`` processes; only 127.0.0.1 is bound (``-t`` binds nothing: it passes even
while the test itself holds the port it names).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.clikit import ENV, distpat
from tests.nutcracker import free_ports
from tests.rediskit import HOST, raw_exchange, redis_servers
from tests.tlskit import Issuer, running_distpat


def assert_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert (done.returncode, done.stdout, done.stderr) == (0, "configuration OK\n", ""), done


def assert_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done
    assert done.stderr.startswith("distpat: error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)


def test_proxy_t_checks_the_file_and_binds_nothing(tmp_path: Path, held_port: int) -> None:
    good = tmp_path / "proxy.toml"
    good.write_text(
        f'[proxy]\nlisten = "{HOST}:{held_port}"\nupstream = ["http://{HOST}:1"]\n'
        f'admin = "{HOST}:{held_port}"\n'
        'max_body_bytes = "10m"\nheader_timeout = "5s"\n'
    )
    assert_ok(distpat("proxy", "-t", "--config", str(good)))
    assert_ok(
        distpat("proxy", "--test-config", "--listen", f":{held_port}", "--upstream", f"http://{HOST}:1")
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(f'listen = "{HOST}:1"\nupstream = ["http://{HOST}:1"]\nworkers = true\n')
    assert_error(distpat("proxy", "-t", "--config", str(bad)), str(bad), "workers must be an integer")
    assert_error(distpat("proxy", "-t", "--listen", "nowhere"), "--listen must be HOST:PORT")
    assert_error(
        distpat("proxy", "-t", "--listen", ":1", "--upstream", f"http://{HOST}:1", "--log-level", "loud"),
        "--log-level must be one of debug, info, warning, error",
    )


def test_sidecar_t_loads_the_certificates(tmp_path: Path, held_port: int) -> None:
    issuer = Issuer(tmp_path)
    a, b = issuer.pair("a", "localhost"), issuer.pair("b", "localhost")
    base = ["sidecar", "-t", "--listen", f"{HOST}:{held_port}", "--upstream", f"http://{HOST}:1"]
    assert_ok(distpat(*base, "--cert", str(a.cert), "--key", str(a.key), "--client-ca", str(issuer.ca_path)))
    assert_error(distpat(*base, "--cert", str(a.cert), "--key", str(b.key)), str(b.key), "does not match")
    assert_error(distpat(*base, "--cert", str(a.key), "--key", str(a.cert)), "holds a private key")
    tcp = ["sidecar", "-t", "--listen", f":{held_port}", "--mode", "tcp", "--cert", str(a.cert)]
    assert_ok(distpat(*tcp, "--key", str(a.key), env={"DISTPAT_UPSTREAM": f"tcp://{HOST}:1"}))
    assert_error(
        distpat(*tcp, "--key", str(tmp_path / "none.key"), "--upstream", f"tcp://{HOST}:1"), "no such file"
    )


def test_redis_shard_t_reads_the_yaml_as_nutcracker_does(tmp_path: Path, held_port: int) -> None:
    good = tmp_path / "nutcracker.yml"
    good.write_text(f"alpha:\n  listen: {HOST}:{held_port}\n  redis: true\n  servers:\n   - {HOST}:1:1 s1\n")
    assert_ok(distpat("redis-shard", "-t", "-c", str(good), "-s", str(held_port)))
    assert_ok(distpat("redis-shard", "--test-conf", "--conf-file", str(good)))
    bad = tmp_path / "bad.yml"
    bad.write_text(f"alpha:\n  listen: {HOST}:1\n  hash: nohash\n  servers:\n   - {HOST}:1:1\n")
    assert_error(distpat("redis-shard", "-t", "-c", str(bad)), str(bad), "alpha", "hash")
    assert_error(
        distpat("redis-shard", "-t", "-c", str(good), "-d"), "-d: distpat redis-shard does not daemonize"
    )
    assert_error(distpat("redis-shard", "-c", str(good), "-d"), "run it in the foreground under a supervisor")
    assert_error(distpat("redis-shard", "-t", "-c", str(good), "-v", "6", "--log-level", "info"), "not both")
    example = Path(__file__).resolve().parents[1] / "examples" / "nutcracker.yml"
    assert_ok(distpat("redis-shard", "-t", "-c", str(example)))


async def test_redis_shard_takes_a_nutcracker_command_line(tmp_path: Path) -> None:
    """-c -s -a -v -o -p -i -m as a nutcracker unit file writes them: served, logged, pid file kept."""
    async with redis_servers(tmp_path, 1) as (server,):
        listen, stats = free_ports(2)
        yml = tmp_path / "nutcracker.yml"
        yml.write_text(
            f"alpha:\n  listen: {HOST}:{listen}\n  redis: true\n  servers:\n   - {HOST}:{server.port}:1 s1\n"
        )
        pid_file, log_file = tmp_path / "nutcracker.pid", tmp_path / "nutcracker.log"
        argv = [
            "-c",
            str(yml),
            "-s",
            str(stats),
            "-a",
            HOST,
            "-v",
            "7",
            "-o",
            str(log_file),
            "-p",
            str(pid_file),
        ]
        argv += ["-i", "30000", "-m", "16384"]
        async with running_distpat("redis-shard", tmp_path, listen, argv, also=[stats]) as run:
            assert pid_file.read_text() == f"{run.process.pid}\n"
            data, _ = await raw_exchange(listen, b"PING\r\n")
            assert data == b"+PONG\r\n"
            stats_doc, closed = await raw_exchange(stats, b"")
            assert closed
            assert "alpha" in json.loads(stats_doc)
            text = log_file.read_text()
            assert "pool alpha: listening on" in text
            assert "--mbuf-size is accepted for nutcracker's command lines and has no effect" in text
            run.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(run.process.wait, 20) == 0
        assert not pid_file.exists()


async def test_json_log_lines(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as (server,):
        (listen,) = free_ports(1)
        argv = ["--server", f"{HOST}:{server.port}", "--listen", f"{HOST}:{listen}", "-s", "0"]
        async with running_distpat("redis-shard", tmp_path, listen, [*argv, "--log-format", "json"]) as run:
            await run.wait_for_log("listening on")
            lines = [json.loads(line) for line in run.log().splitlines() if line.strip()]
        assert lines, run.log()
        first = next(line for line in lines if "listening on" in line["message"])
        assert set(first) == {"time", "level", "logger", "message"}
        assert first["level"] == "info"
        assert first["logger"] == "distpat.redis"
        assert first["time"].endswith("Z")
        assert "T" in first["time"]
        async with running_distpat(
            "redis-shard", tmp_path / "quiet", listen, [*argv, "--log-level", "warning"]
        ) as run:
            data, _ = await raw_exchange(listen, b"PING\r\n")
            assert data == b"+PONG\r\n"
            assert "listening on" not in run.log()


def test_json_formatter_carries_the_exception() -> None:
    import logging

    from distpat.cli.logs import JsonFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "distpat.proxy", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed x"
    assert entry["level"] == "error"
    assert entry["logger"] == "distpat.proxy"
    assert "ValueError: boom" in entry["exception"]


def test_top_level_help_says_what_exists() -> None:
    done = distpat("--help")
    assert done.returncode == 0
    assert "later releases" not in done.stdout
    for command in ("ring", "proxy", "sidecar", "redis-shard"):
        assert command in done.stdout
    for command in ("proxy", "sidecar", "redis-shard"):
        text = distpat(command, "--help").stdout
        assert "--test-config" in text
        assert "--log-level" in text
        assert "--log-format" in text


async def test_proxy_log_settings_leave_the_access_log_alone(tmp_path: Path) -> None:
    """--log-level error hides the application's info lines; the access log still gets every request."""
    from tests.httpkit import Backend, exchange

    async with Backend() as backend:
        (listen,) = free_ports(1)
        argv = [
            "proxy",
            "--listen",
            f"{HOST}:{listen}",
            "--upstream",
            backend.url,
            "--access-log",
            "combined",
        ]
        log_path = tmp_path / "proxy.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "distpat", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=ENV | {"DISTPAT_LOG_LEVEL": "error", "DISTPAT_LOG_FORMAT": "json"},
                start_new_session=True,
            )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                try:
                    [response] = await exchange(
                        listen, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                    )
                    break
                except OSError:
                    assert process.poll() is None, log_path.read_text()
                    assert loop.time() < deadline, log_path.read_text()
                    await asyncio.sleep(0.05)
            assert response.status == 200
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 20) == 0
    lines = log_path.read_text().splitlines()
    assert any('"GET /x HTTP/1.1" 200' in line for line in lines), lines  # the access log, as it was
    assert not any("listening on" in line for line in lines), lines  # info: under --log-level error
