"""distpat.core.split against a real nginx: the same variant for each key, the same hashes and boundaries.

One nginx (Debian package nginx or nginx-light, /usr/sbin/nginx) runs on a free 127.0.0.1 port with a
``split_clients "${arg_k}"`` block per percentage set and answers ``[$v1|$v2|...]``: every set's variant
for the key in ``?k=``. Thousands of keys go to it over one keep-alive connection (pipelined in batches),
and each answer is compared with SplitTable, key for key.

What nginx hashes is the raw text of ``$arg_k``: the query bytes after ``k=`` up to the next ``&``,
still percent-encoded (``?k=%C3%A9`` hashes the six bytes ``%C3%A9``, not ``é``), with ``+`` left as
it is, and the argument name matched case-insensitively. A missing ``k`` is the empty string. The
expected keys below are written that way.

Debian's nginx is built ``--with-debug``: a location with ``error_log ... debug`` logs ``http split:
<hash> <boundary>`` for each line the variable handler compares, which shows nginx's murmur2 value and
its stored boundaries directly.

nginx before 1.31.2 leaves an explicit last share that reaches 100% with its rounded boundary, so the
top hash values of a set without ``*`` get an empty value there; distpat sends them to the last line.
The keys whose hash is exactly 0xFFFFFFFF (and each boundary's neighbours) are built by inverting
murmur2, so that difference is seen, and asserted exactly, on whichever nginx is installed.
"""

from __future__ import annotations

import importlib
import random
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from distpat.core.split import SplitTable, murmur2
from tests.test_split_core import MASK, URL_SAFE, as_lines, key_with_hash, nginx_lookup, nginx_parts

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
servers: ModuleType = importlib.import_module("_servers")

#: The first nginx whose explicit last share reaching 100% catches the rest (as '*' does).
FIXED_IN = (1, 31, 2)

SETS: dict[str, list[tuple[str, str]]] = {
    "v1": [("a", "10"), ("b", "20.55"), ("c", "*")],
    "v2": [("tiny", "0.01"), ("tiny2", "0.01"), ("x", "49.98"), ("y", "*")],
    "v3": [("a", "50"), ("b", "50")],
    "v4": [("a", "33.33"), ("b", "33.33"), ("c", "*")],
    "v5": [("a", "0.01"), ("b", "99.99")],
    "v6": [("a", "12.5"), ("b", "12.5"), ("a", "25"), ("d", "*")],
    "v7": [("a", "33.33"), ("b", "33.33"), ("c", "33.34")],
    "v8": [("only", "100")],
}
TABLES = {var: SplitTable.from_variants(pairs) for var, pairs in SETS.items()}
RANDOM_KEYS = 3000
BATCH = 200


# --- nginx --------------------------------------------------------------------------------------------


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.fail(
            "nginx is not installed; these tests need it: run `apt-get install -y nginx-light` (or nginx)",
            pytrace=False,
        )
    return path


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    assert found, f"cannot read the version from `{binary} -v`: {out.stderr!r}"
    return tuple(int(part) for part in found.groups())


def split_block(var: str, pairs: Sequence[tuple[str, str]]) -> str:
    lines = "".join(f"    {'*' if text == '*' else text + '%'} {name};\n" for name, text in pairs)
    return f'split_clients "${{arg_k}}" ${var} {{\n{lines}}}\n'


@dataclass(frozen=True)
class Nginx:
    port: int
    version: tuple[int, ...]
    hash_log: Path
    bounds_log: Path

    @property
    def fixed(self) -> bool:
        return self.version >= FIXED_IN


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    binary = nginx_binary()
    base = tmp_path_factory.mktemp("split-nginx")
    [port] = servers.free_ports(1)
    answer = "|".join(f"${{{var}}}" for var in SETS)
    hash_log, bounds_log = base / "hash.log", base / "bounds.log"
    body = "".join(split_block(var, pairs) for var, pairs in SETS.items())
    body += split_block("vh", [("z", "*")])
    body += f"""
server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "[{answer}]"; }}
    location /hash {{ error_log {hash_log} debug; return 200 "[$vh]"; }}
    location /bounds {{ error_log {bounds_log} debug; return 200 "[{answer}]"; }}
}}
"""
    service = servers.start_nginx("nginx", binary, port=port, base_dir=base, http_body=body)
    try:
        yield Nginx(port, nginx_version(binary), hash_log, bounds_log)
    finally:
        service.stop()


class Pipeline:
    """GET requests over one keep-alive connection, sent in batches and answered in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((servers.LOOPBACK, port), timeout=10)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def _read_until(self, size: int) -> None:
        for _ in range(100_000):
            if len(self.buffer) >= size:
                return
            chunk = self.sock.recv(65536)
            assert chunk, "nginx closed the connection"
            self.buffer += chunk
        raise AssertionError("no response after 100,000 reads")

    def _response(self) -> bytes:
        for _ in range(1000):
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._read_until(len(self.buffer) + 1)
        else:
            raise AssertionError("no header end")
        head = self.buffer[:end].decode("latin-1")
        assert head.startswith("HTTP/1.1 200 "), head
        length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        self._read_until(end + 4 + length)
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        return body

    def get(self, targets: Sequence[bytes]) -> list[bytes]:
        bodies: list[bytes] = []
        for start in range(0, len(targets), BATCH):
            batch = targets[start : start + BATCH]
            self.sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: split.test\r\n\r\n" % t for t in batch))
            bodies += [self._response() for _ in batch]
        return bodies


# --- keys ---------------------------------------------------------------------------------------------

#: (request target, the bytes nginx hashes as ${arg_k})
EDGE_CASES: list[tuple[bytes, bytes]] = [
    (b"/", b""),  # no k at all
    (b"/?k=", b""),
    (b"/?k", b""),  # a name without '=' is not the argument
    (b"/?k=" + b"L" * 4000, b"L" * 4000),
    (b"/?k=%C3%A9t%C3%A9", b"%C3%A9t%C3%A9"),  # still percent-encoded
    (b"/?k=\xc3\xa9t\xc3\xa9", b"\xc3\xa9t\xc3\xa9"),  # raw UTF-8 in the request line
    (b"/?k=\xff\x80\xfe\xc0", b"\xff\x80\xfe\xc0"),  # bytes >= 0x80 are unsigned (DEL gets a 400)
    (b"/?k=a+b", b"a+b"),  # '+' is not decoded
    (b"/?k=a=b", b"a=b"),
    (b"/?k=x&k=y", b"x"),  # the first k wins
    (b"/?x=1&k=second", b"second"),
    (b"/?K=upper", b"upper"),  # argument names match case-insensitively
    (b"/?kk=no&k=yes", b"yes"),
]


def boundary_targets() -> list[int]:
    """Every boundary of every set (distpat's and old nginx's), its neighbour below, and both ends."""
    targets = {0, 1, MASK - 1, MASK}
    for var, pairs in SETS.items():
        lines = as_lines(pairs)
        bounds = {b for _, b in TABLES[var].buckets[:-1]}
        bounds |= {p for _, p in nginx_parts(lines, fixed=False) if p}
        for b in bounds:
            targets |= {b - 1, b}
    return sorted(targets)


@pytest.fixture(scope="module")
def cases() -> list[tuple[bytes, bytes]]:
    rng = random.Random(1204)
    found: list[tuple[bytes, bytes]] = list(EDGE_CASES)
    for target in boundary_targets():
        key = key_with_hash(target)
        found.append((b"/?k=" + key, key))
    for _ in range(RANDOM_KEYS):
        key = bytes(rng.choices(URL_SAFE, k=rng.randint(0, 48)))
        found.append((b"/?k=" + key, key))
    return found


def answers(body: bytes) -> dict[str, str]:
    assert body[:1] == b"[", body
    assert body[-1:] == b"]", body
    return dict(zip(SETS, body[1:-1].decode().split("|"), strict=True))


# --- tests --------------------------------------------------------------------------------------------


def test_every_key_gets_the_variant_nginx_gives_it(nginx: Nginx, cases: list[tuple[bytes, bytes]]) -> None:
    client = Pipeline(nginx.port)
    try:
        bodies = client.get([target for target, _ in cases])
    finally:
        client.close()
    wrong: list[str] = []
    compared = gaps = 0
    for (target, key), body in zip(cases, bodies, strict=True):
        key_hash = murmur2(key)
        for var, given in answers(body).items():
            lines = as_lines(SETS[var])
            ours = TABLES[var].variant(key)
            compared += 1
            if given != nginx_lookup(lines, key_hash, fixed=nginx.fixed):
                wrong.append(
                    f"{var} {target[:40]!r} hash {key_hash}: nginx {given!r}, expected by nginx's steps"
                )
            if given == "":
                # only old nginx, only a set without '*', only above its last rounded boundary
                gaps += 1
                if nginx.fixed or SETS[var][-1][1] == "*" or ours != SETS[var][-1][0]:
                    wrong.append(f"{var} {target[:40]!r} hash {key_hash}: nginx '', distpat {ours!r}")
            elif ours != given:
                wrong.append(f"{var} {target[:40]!r} hash {key_hash}: nginx {given!r}, distpat {ours!r}")
    assert not wrong, f"{len(wrong)} of {compared} answers differ:\n" + "\n".join(wrong[:20])
    assert compared == len(cases) * len(SETS) >= 3000 * len(SETS)
    if nginx.fixed:
        assert gaps == 0
    else:
        # at least the key hashing to 0xFFFFFFFF in each of the four sets without '*'
        assert gaps >= 4


def test_nginx_logs_the_murmur2_distpat_computes(nginx: Nginx, cases: list[tuple[bytes, bytes]]) -> None:
    sample = cases[:400]
    client = Pipeline(nginx.port)
    try:
        bodies = client.get(
            [target.replace(b"/?", b"/hash?", 1) if b"?" in target else b"/hash" for target, _ in sample]
        )
    finally:
        client.close()
    assert set(bodies) == {b"[z]"}
    logged = [int(h) for h, _ in re.findall(rb"http split: (\d+) (\d+)", nginx.hash_log.read_bytes())]
    assert logged, "nginx logged no 'http split' debug lines: it must be built --with-debug (Debian's is)"
    assert logged == [murmur2(key) for _, key in sample]


def test_nginx_stores_the_boundaries_distpat_computes(nginx: Nginx) -> None:
    top = key_with_hash(MASK)  # above every boundary: the handler compares it with every line
    client = Pipeline(nginx.port)
    try:
        [body] = client.get([b"/bounds?k=" + top])
    finally:
        client.close()
    logged = re.findall(rb"http split: (\d+) (\d+)", nginx.bounds_log.read_bytes())
    assert logged, "nginx logged no 'http split' debug lines: it must be built --with-debug (Debian's is)"
    assert {int(h) for h, _ in logged} == {MASK}
    stored = iter(int(p) for _, p in logged)
    for var, pairs in SETS.items():
        parts = [next(stored) for _ in pairs]
        assert parts == [p for _, p in nginx_parts(as_lines(pairs), fixed=nginx.fixed)], var
        ours = [b for _, b in TABLES[var].buckets]
        assert parts[:-1] == ours[:-1], var
        if pairs[-1][1] == "*" or nginx.fixed:
            assert parts[-1] == 0, var  # nginx's "the rest", distpat's 2**32
        else:
            assert parts[-1] == sum(p * 0xFFFFFFFF // 10000 for p in (h for _, h in as_lines(pairs)) if p)
            assert answers(body)[var] == ""  # the old gap; distpat answers the last line
            assert TABLES[var].variant(top) == pairs[-1][0]
    assert next(stored, None) is None
