"""NginxChashRing against a real nginx: every request URI must reach the server nginx picks.

One nginx on 127.0.0.1 holds several ``upstream`` blocks, each ``hash
$request_uri consistent;`` over servers that are further ``server`` blocks of
the same nginx (TCP on 127.0.0.1, and unix sockets for the ``unix:`` form),
each answering with a label of its own. A front ``server`` proxies ``/uN/...``
to upstream ``uN``. Ports are drawn at random on every run, so the
``host:port`` strings nginx hashes differ from run to run. For thousands of
request targets per upstream (paths, query strings, percent-encodings, some
several KiB long, some repeated) the server that answered must be the one
``NginxChashRing(servers).get_node(target)`` names, the key being the target
exactly as it went on the request line (nginx's ``$request_uri``). A second
test finds two ports whose servers share a point and checks that nginx, like
the ring, gives the point to the server listed first, in both orders.

nginx missing is a failure naming the Debian package, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from distpat.core.ring import NginxChashRing
from distpat.core.ring.nginx_chash import server_points
from tests.nutcracker import HOST, free_ports

REQUESTS_PER_UPSTREAM = 2000
CONNECTIONS = 6
START_TIMEOUT = 10.0
RUN_TIMEOUT = 60.0

# Characters a path segment may hold as they are (RFC 3986 unreserved and
# sub-delims, plus ':' and '@'), and those a query may hold besides.
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
QUERY_CHARS = PATH_CHARS + "/?"
# Bytes never percent-encoded in a path: nginx decodes a path before matching
# locations, and an encoded '.' or '/' could make a dot-segment that leaves
# /uN/ (or the root), and an encoded NUL is refused.
NOT_ENCODED = {0x00, 0x2E, 0x2F}


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    servers: Mapping[str, int]  # "127.0.0.1:port" -> weight, in configuration order


def labels(upstreams: list[Upstream]) -> dict[str, str]:
    """What each server answers with: a label naming it."""
    names = dict.fromkeys(server for u in upstreams for server in u.servers)
    return {server: f"s{i}" for i, server in enumerate(names)}


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        pytest.fail(
            "nginx is not installed; the interop tests need the real binary: "
            "run `apt-get install -y nginx-light` (or the package nginx)",
            pytrace=False,
        )
    return path


def nginx_conf(workdir: Path, front: int, upstreams: list[Upstream]) -> str:
    lines = [
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"pid {workdir / 'nginx.pid'};",
        f"error_log {workdir / 'error.log'} warn;",
    ]
    if os.geteuid() == 0:  # as root the worker would become nobody, who cannot enter the temp dir
        lines.append("user root;")
    lines += ["events { worker_connections 512; }", "http {", "    access_log off;"]
    for directive in ("client_body", "proxy"):
        lines.append(f"    {directive}_temp_path {workdir / directive};")
    lines.append("    keepalive_requests 100000;")
    for server, label in labels(upstreams).items():  # listen takes the address as upstream's server does
        lines.append(f'    server {{ listen {server}; location / {{ return 200 "{label}"; }} }}')
    for u in upstreams:
        lines.append(f"    upstream {u.name} {{")
        lines.append("        hash $request_uri consistent;")
        for server, weight in u.servers.items():
            lines.append(f"        server {server}" + (f" weight={weight};" if weight != 1 else ";"))
        lines.append("        keepalive 8;")
        lines.append("    }")
    lines += ["    server {", f"        listen {HOST}:{front};", "        large_client_header_buffers 4 16k;"]
    for u in upstreams:
        lines += [
            f"        location /{u.name}/ {{",
            f"            proxy_pass http://{u.name};",
            "            proxy_http_version 1.1;",
            '            proxy_set_header Connection "";',
            "        }",
        ]
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@contextlib.contextmanager
def running_nginx(workdir: Path, front: int, upstreams: list[Upstream]) -> Iterator[None]:
    nginx = nginx_binary()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, front, upstreams), encoding="utf-8")
    proc = subprocess.Popen(
        [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(front):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (
                    (workdir / "error.log").read_text(errors="replace")
                    if (workdir / "error.log").exists()
                    else ""
                )
                err = (
                    proc.stderr.read().decode(errors="replace")
                    if proc.poll() is not None and proc.stderr
                    else ""
                )
                pytest.fail(f"nginx did not start on {HOST}:{front}:\n{err}{log}", pytrace=False)
            time.sleep(0.05)
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


def _encoded(rng: random.Random) -> str:
    while True:
        b = rng.randrange(256)
        if b not in NOT_ENCODED:
            return f"%{b:02X}" if rng.random() < 0.5 else f"%{b:02x}"


def _segment(rng: random.Random, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_encoded(rng) if rng.random() < 0.15 else rng.choice(PATH_CHARS))
    text = "".join(out)
    return "x" + text if text.strip(".") == "" else text  # never a dot-segment


def _value(rng: random.Random) -> str:
    return "".join(
        _encoded(rng) if rng.random() < 0.1 else rng.choice(QUERY_CHARS) for _ in range(rng.randrange(30))
    )


def request_targets(rng: random.Random, prefix: str, count: int) -> list[str]:
    """``count`` request targets under ``/prefix/``: short, long, with and without queries, some repeated."""
    out: list[str] = []
    while len(out) < count:
        r = rng.random()
        if r < 0.05 and out:
            out.append(rng.choice(out))  # a repeat: the same key must land on the same server again
            continue
        if r < 0.1:
            path = _segment(rng, rng.randrange(1000, 6000))  # long: past the ring's memo
        else:
            path = "/".join(_segment(rng, rng.randrange(1, 20)) for _ in range(rng.randrange(1, 5)))
        target = f"/{prefix}/{path}"
        if rng.random() < 0.6:
            pairs = [
                f"{_segment(rng, rng.randrange(1, 8))}={_value(rng)}" for _ in range(rng.randrange(1, 4))
            ]
            target += "?" + "&".join(pairs)
        out.append(target)
    return out


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    assert "content-length" in headers, head
    body = await reader.readexactly(int(headers["content-length"]))
    return status, body, headers.get("connection", "").lower() == "close"


async def _client(port: int, targets: list[tuple[int, str]], answers: dict[int, bytes]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for i, target in targets:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: interop\r\n\r\n".encode("ascii"))
            status, body, close = await _read_response(reader)
            assert status == 200, (status, target, body[:200])
            answers[i] = body
            if close:  # keep-alive ended by the server: go on over a new connection
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def fetch_all(port: int, targets: list[str]) -> list[bytes]:
    """Every target's answer, over ``CONNECTIONS`` keep-alive connections."""
    answers: dict[int, bytes] = {}
    indexed = list(enumerate(targets))
    shares = [indexed[c::CONNECTIONS] for c in range(CONNECTIONS)]
    await asyncio.wait_for(
        asyncio.gather(*(_client(port, s, answers) for s in shares)),
        RUN_TIMEOUT,
    )
    return [answers[i] for i in range(len(targets))]


async def check_upstream(
    front: int, u: Upstream, targets: list[str], label_of: Mapping[str, str]
) -> Counter[str]:
    """Send every target through ``u``; fail unless each reached the ring's server. Returns the counts."""
    ring = NginxChashRing(u.servers)
    got = await fetch_all(front, targets)
    by_label = {label_of[name].encode(): name for name in u.servers}
    answered = [by_label.get(body, body.decode(errors="replace")) for body in got]
    expected = [ring.get_node(t) for t in targets]
    wrong = [(t, a, e) for t, a, e in zip(targets, answered, expected, strict=True) if a != e]
    assert not wrong, (
        f"{u.name} ({dict(u.servers)}): {len(wrong)} of {len(targets)} targets differ; "
        f"first (target, nginx, ring): {[(t[:80], a, e) for t, a, e in wrong[:3]]}"
    )
    return Counter(answered)


@pytest.mark.parametrize("run", [1, 2])
async def test_every_request_uri_lands_where_nginx_sends_it(tmp_path: Path, run: int) -> None:
    rng = random.Random()
    ports = free_ports(1 + 3 + 5 + 4 + 2)
    front, tcp = ports[0], [f"{HOST}:{p}" for p in ports[1:]]
    # Unix sockets exercise the "unix:" form of a server's name (hashed as its path, with no port).
    unix = [f"unix:{tmp_path / f'b{rng.randrange(10**6)}-{i}.sock'}" for i in range(2)]
    upstreams = [
        Upstream("u1", dict.fromkeys(tcp[0:3], 1)),
        Upstream("u2", dict.fromkeys(tcp[3:8], 1)),
        Upstream("u3", dict(zip(tcp[8:12], [3, 1, 2, 1], strict=True))),
        Upstream("u4", {unix[0]: 1, tcp[12]: 2, unix[1]: 1, tcp[13]: 1}),
    ]
    label_of = labels(upstreams)
    summary = []
    with running_nginx(tmp_path, front, upstreams):
        for u in upstreams:
            targets = request_targets(rng, u.name, REQUESTS_PER_UPSTREAM)
            counts = await check_upstream(front, u, targets, label_of)
            assert set(counts) == set(u.servers), counts  # every server took part
            assert any(len(t) > 256 for t in targets)  # and long targets, past the memo, were among them
            summary.append((u.name, len(targets), dict(counts)))
    print(f"run {run}:", summary)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def shared_points(rng: random.Random) -> Iterator[tuple[int, int, int]]:
    """Free ports P, Q whose servers ``127.0.0.1:P`` and ``127.0.0.1:Q`` share a point, and the point.

    Among 2,500 random ports some 15 such pairs are expected (160 points each
    in a 32-bit space); the search is bounded by the candidates drawn.
    """
    seen: dict[int, int] = {}
    for port in rng.sample(range(10_000, 30_000), 2500):
        for h in set(server_points(f"{HOST}:{port}", 1)):
            other = seen.setdefault(h, port)
            if other != port and _port_free(other) and _port_free(port):
                yield other, port, h


def wide_shared_point(rng: random.Random) -> tuple[int, int, int]:
    """A shared point (see :func:`shared_points`) whose arc is 1/5000 of the ring or more: keys find it."""
    for p, q, h in shared_points(rng):
        hashes = [point for point, _ in NginxChashRing([f"{HOST}:{p}", f"{HOST}:{q}"]).continuum()]
        i = hashes.index(h)
        arc = h - hashes[i - 1] if i else h + (1 << 32) - hashes[-1]
        if arc * 5000 >= 1 << 32:
            return p, q, h
    pytest.fail("no two of 2,500 ports share a point with a wide enough arc (about 15 pairs were expected)")


async def test_a_point_two_servers_share_goes_to_the_one_listed_first(tmp_path: Path) -> None:
    """nginx keeps one of equal points; which one follows its sort. Checked both ways round."""
    rng = random.Random()
    p, q, h = wide_shared_point(rng)
    first, second = f"{HOST}:{p}", f"{HOST}:{q}"
    front = next(port for port in free_ports(3) if port not in (p, q))
    upstreams = [Upstream("u5", {first: 1, second: 1}), Upstream("u6", {second: 1, first: 1})]
    label_of = labels(upstreams)
    with running_nginx(tmp_path, front, upstreams):
        for u, owner in zip(upstreams, (first, second), strict=True):
            ring = NginxChashRing(u.servers)
            assert sorted(ring.points().values()) == [159, 160]  # the shared point counted once
            index = [point for point, _ in ring.continuum()].index(h)
            assert ring.continuum()[index][1] == owner
            # Targets whose key hashes onto the shared point's arc, found by bounded random search.
            on_point: list[str] = []
            for _ in range(400_000):
                target = f"/{u.name}/k{rng.getrandbits(64):x}"
                if ring.point_index(target) == index:
                    on_point.append(target)
                    if len(on_point) == 30:
                        break
            assert len(on_point) == 30, on_point  # ~80 expected in the tries allowed
            counts = await check_upstream(front, u, on_point + request_targets(rng, u.name, 300), label_of)
            assert counts[owner] >= len(on_point), counts
