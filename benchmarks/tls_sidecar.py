"""TLS-terminating sidecar benchmark: distpat sidecar against nginx terminating TLS, in one run.

One invocation makes a throwaway CA and a server certificate for localhost and 127.0.0.1 with trustme
(RSA-2048 by default, as for the anchor in shared/ANCHORS.md; --key-type ecdsa for P-256) in a temp dir,
and starts, on 127.0.0.1 only, each in its own process group:

  backend   nginx, 1 worker, plain HTTP: GET / answers "hello world\\n" (12 bytes); /static/1m.bin is a
            1 MiB file in the temp dir
  nginx     nginx terminating TLS, 1 worker: listen ... ssl, ssl_protocols TLSv1.2 TLSv1.3,
            ssl_session_cache shared:SSL:10m, proxying to the backend with upstream keepalive 64,
            proxy_http_version 1.1 and Connection "" (otherwise stock: proxy buffering on)
  distpat   distpat sidecar --cert CERT --key KEY --upstream http://BACKEND --workers 1

Both contenders must first answer / and /static/1m.bin with the backend's bytes over TLS verified
against the CA. The TLS each negotiates is shown (openssl s_client: protocol, cipher, key-exchange group,
signature), and whether each resumes a session and closes the connection on "Connection: close". Then,
the contenders alternated in every round, the order rotating, and medians over rounds compared (ratios
are medians of same-round ratios), with wrk, the servers and the backend sharing the machine's cores:

  1. keep-alive: wrk -t1 -c32 --latency https://.../  req/s, p50/p99; goal: distpat >= 0.5x nginx
  2. a new connection per request:
     a. wrk -H 'Connection: close': wrk reconnects after every response, but it keeps the TLS session of
        the connection it closed and offers it on the next one, so where the server resumes sessions
        these are resumed handshakes (TLS 1.3: a PSK plus a fresh key share, no certificate, no signature)
     b. full handshakes: parallel `openssl s_time -new` clients, a new session every time, each
        connection one GET / HTTP/1.0 (with a Host header smuggled into s_time's -www path)
  3. 1 MiB download: GET /static/1m.bin, MiB/s (wrk's Transfer/sec)

Every table also shows each contender's own CPU time per request or connection (user + system, read
from /proc for its process tree, the backend not counted): with load generators and servers on the
same cores, the rate ratios narrow where the clients are busy (2b above all); CPU per request does not.

Run:

    .venv/bin/python benchmarks/tls_sidecar.py             # full run (about 2 minutes)
    .venv/bin/python benchmarks/tls_sidecar.py --quick     # 1 s runs, 2 rounds

A contender that does not start, answers wrongly or fails under load is reported unavailable, with its
error, and the other still runs. Needs the Debian packages nginx-light, wrk and openssl, and the Python
package trustme (./run setup installs them all).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Generic, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe
from _servers import (
    LOOPBACK,
    Service,
    ServiceError,
    WrkError,
    WrkResult,
    cpu_seconds,
    free_ports,
    median_of,
    nginx_proxy_body,
    raise_nofile_limit,
    ratio,
    require_tool,
    run_parallel,
    run_wrk_url,
    start_nginx,
    start_process,
    tool_output,
    tool_version,
)
from http_proxy import (
    Contender,
    check,
    distpat_command,
    error_note,
    goal_line,
    milliseconds,
    start_checked_backend,
    unavailable_line,
)

SMALL_PATH = "/"
SMALL_BODY = b"hello world\n"
LARGE_PATH = "/static/1m.bin"
LARGE_SIZE = 1024 * 1024
NGINX, DISTPAT = "nginx", "distpat"
KEEPALIVE_GOAL = 0.5  # distpat / nginx req/s, keep-alive small responses
CLOSE_HEADER = "Connection: close"
# `openssl s_time -www PATH` sends "GET PATH HTTP/1.0\r\n\r\n", with no Host header, which a server
# may refuse (distpat answers 400; nginx 200). This PATH smuggles one in, so that both contenders
# forward the request: GET / HTTP/1.0, Host: localhost, and a harmless X-S-Time: HTTP/1.0.
S_TIME_PATH = "/ HTTP/1.0\r\nHost: localhost\r\nX-S-Time:"
S_TIME_REQUEST = f"GET {S_TIME_PATH} HTTP/1.0\r\n\r\n".encode("ascii")
PROBE_TIMEOUT = 5.0  # seconds for one probe exchange (a server that keeps the connection open takes this)
PROBE_LIMIT = 4 * 2**20  # bytes a probe reads at most


@dataclass(slots=True)
class TlsContender(Contender):
    """A contender reached over https (wrk does not verify its certificate; the checks here do)."""

    def url(self, path: str) -> str:
        return f"https://{LOOPBACK}:{self.port}{path}"


# --- certificates -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certs:
    ca: Path  # the CA certificate, for clients that verify
    chain: Path  # the server's certificate chain, leaf first
    key: Path  # the server's private key
    summary: str  # e.g. "RSA-2048 leaf for localhost, 127.0.0.1, signed by a trustme CA"


def make_certs(directory: Path, key_type: str) -> Certs:
    """A trustme CA and a leaf for localhost and 127.0.0.1, written as PEM files into ``directory``."""
    try:
        import trustme
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
    except ImportError as e:
        raise SystemExit(
            f"{e.name} not found: install the Python package trustme into .venv "
            "(.venv/bin/pip install trustme), or run ./run setup"
        ) from None
    kind = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=kind)
    leaf = ca.issue_cert("localhost", LOOPBACK, key_type=kind)
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certs(directory / "ca.pem", directory / "chain.pem", directory / "key.pem", "")
    ca.cert_pem.write_to_path(str(certs.ca))
    for i, pem in enumerate(leaf.cert_chain_pems):
        pem.write_to_path(str(certs.chain), append=i > 0)
    leaf.private_key_pem.write_to_path(str(certs.key))
    key = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_key()
    if isinstance(key, rsa.RSAPublicKey):
        algorithm = f"RSA-{key.key_size}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = f"ECDSA {key.curve.name}"
    else:
        algorithm = type(key).__name__
    summary = f"{algorithm} leaf for localhost, {LOOPBACK}, signed by a trustme CA"
    return Certs(certs.ca, certs.chain, certs.key, summary)


# --- probes over verified TLS -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request on a fresh verified TLS connection, read until the server closed it (or time ran out)."""

    status: str  # the status line, '' if none came
    headers: Mapping[str, str]  # lower-cased names
    body: bytes  # as sent (not de-chunked)
    size: int  # bytes of response read, head included
    closed: bool  # the server closed the connection after the response
    reused: bool  # the TLS session offered was resumed
    session: ssl.SSLSession | None


def exchange(
    port: int, context: ssl.SSLContext, request: bytes, *, session: ssl.SSLSession | None = None
) -> Exchange:
    """Send ``request`` on a new TLS connection (offering ``session``) and read until EOF or timeout."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    data = bytearray()
    closed = False
    with (
        socket.create_connection((LOOPBACK, port), timeout=PROBE_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=LOOPBACK, session=session) as tls,
    ):
        tls.sendall(request)
        while len(data) < PROBE_LIMIT:  # bounded by the limit and the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                break
            tls.settimeout(left)
            try:
                chunk = tls.recv(65536)
            except TimeoutError:
                break
            except (ssl.SSLEOFError, ConnectionResetError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
        reused, current = bool(tls.session_reused), tls.session  # read after the response: TLS 1.3 tickets
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return Exchange(status, headers, body, len(data), closed, reused, current)


@dataclass(slots=True)
class TlsFacts:
    """What one contender's TLS and connection handling came to, before the load runs."""

    handshake: Mapping[str, str]  # from openssl s_client -brief: protocol, cipher, group, signature
    handshake_error: str | None = None
    resumes: bool | None = None  # None: not found out
    closes: bool | None = None  # closes after answering a request with Connection: close
    close_note: str = ""
    http10_size: int | None = None  # bytes of the answer to s_time's request, when it is 200 + body
    http10_note: str = ""

    def key(self) -> tuple[str, ...]:
        """What the two contenders' handshakes must share to be the same kind of handshake."""
        return tuple(self.handshake.get(k, "?") for k in ("protocol", "cipher", "group", "signature"))


_BRIEF = {
    "Protocol version": "protocol",
    "Ciphersuite": "cipher",
    "Server Temp Key": "group",
    "Signature type": "signature",
    "Verification": "verification",
}


def s_client(openssl: str, port: int, ca: Path) -> tuple[dict[str, str], str | None]:
    """(what ``openssl s_client -brief`` reports of the handshake, an error or None)."""
    argv = [openssl, "s_client", "-brief", "-connect", f"{LOOPBACK}:{port}", "-servername", "localhost"]
    argv += ["-CAfile", str(ca), "-verify_return_error"]
    try:
        out = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return {}, "openssl s_client did not finish within 10 s"
    text = out.stdout + out.stderr
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name.strip() in _BRIEF:
            found[_BRIEF[name.strip()]] = value.strip()
    if "group" in found:
        found["group"] = found["group"].split(",")[0]  # "X25519, 253 bits" -> "X25519"
    if out.returncode != 0 or found.get("verification") != "OK":
        return found, f"openssl s_client exited with code {out.returncode}: {text.strip()[-300:]!r}"
    return found, None


def probe(c: TlsContender, openssl: str, certs: Certs, context: ssl.SSLContext) -> TlsFacts:
    """Handshake details, session resumption, Connection: close and s_time's HTTP/1.0 request."""
    found, error = s_client(openssl, c.port, certs.ca)
    facts = TlsFacts(found, error)
    request = f"GET / HTTP/1.1\r\nHost: localhost:{c.port}\r\n{CLOSE_HEADER}\r\n\r\n".encode("ascii")
    try:
        first = exchange(c.port, context, request)
        # wrk reconnects cleanly only if the response says Connection: close; a server that just closes
        # would cost wrk a read error per request (it would send its next request on the closed one).
        says_close = first.headers.get("connection", "").lower() == "close"
        answered = first.status.startswith("HTTP/1.1 200") and first.body == SMALL_BODY
        facts.closes = first.closed and says_close and answered
        if not facts.closes:
            facts.close_note = (
                f"answered {first.status!r} with {len(first.body)} body bytes, "
                f"Connection: {first.headers.get('connection', '(none)')}, and "
                + ("closed" if first.closed else f"kept the connection open for {PROBE_TIMEOUT:g} s")
            )
        if first.session is not None:
            facts.resumes = exchange(c.port, context, request, session=first.session).reused
        http10 = exchange(c.port, context, S_TIME_REQUEST)
        if http10.status.split(" ")[1:2] == ["200"] and http10.body == SMALL_BODY and http10.closed:
            facts.http10_size = http10.size
        else:
            facts.http10_note = (
                f"s_time's GET / HTTP/1.0 answered {http10.status!r} with {len(http10.body)} body bytes"
                + ("" if http10.closed else " and did not close")
            )
    except (OSError, ValueError) as e:
        facts.close_note = facts.close_note or f"{type(e).__name__}: {e}"
        facts.http10_note = facts.http10_note or f"{type(e).__name__}: {e}"
    return facts


# --- starting everything ------------------------------------------------------------------------------


def start_all(
    stack: contextlib.ExitStack, tmp: Path, nginx: str, certs: Certs, args: argparse.Namespace
) -> tuple[list[TlsContender], dict[str, bytes]]:
    """Start the backend and both contenders (stops registered on ``stack``); check their answers."""
    www = tmp / "www" / "static"
    www.mkdir(parents=True)
    large = os.urandom(LARGE_SIZE)
    (www / Path(LARGE_PATH).name).write_bytes(large)
    expected = {SMALL_PATH: SMALL_BODY, LARGE_PATH: large}

    backend_port, nginx_port, distpat_port = free_ports(3)
    start_checked_backend(stack, nginx, backend_port, tmp, expected)

    context = ssl.create_default_context(cafile=str(certs.ca))
    starters: dict[str, tuple[int, Callable[[], Service]]] = {
        NGINX: (
            nginx_port,
            lambda: start_nginx(
                "nginx-tls",
                nginx,
                port=nginx_port,
                base_dir=tmp,
                worker_connections=4096,
                http_body=nginx_proxy_body(
                    backend_port,
                    f"{LOOPBACK}:{nginx_port} ssl backlog=4096",
                    f"ssl_certificate {certs.chain};",
                    f"ssl_certificate_key {certs.key};",
                    "ssl_protocols TLSv1.2 TLSv1.3;",
                    "ssl_session_cache shared:SSL:10m;",
                ),
            ),
        ),
        DISTPAT: (
            distpat_port,
            lambda: start_process(
                "distpat",
                [
                    *distpat_command(args.distpat),
                    "sidecar",
                    "--listen",
                    f"{LOOPBACK}:{distpat_port}",
                    "--cert",
                    str(certs.chain),
                    "--key",
                    str(certs.key),
                    "--upstream",
                    f"http://{LOOPBACK}:{backend_port}",
                    "--workers",
                    "1",
                ],
                port=distpat_port,
                log_dir=tmp,
                timeout=15,
            ),
        ),
    }
    contenders = []
    for name, (port, start) in starters.items():
        contender = TlsContender(name, port)
        try:
            contender.service = start()
        except ServiceError as e:
            contender.fail(str(e))
        else:
            stack.callback(contender.service.stop)
            error = check(port, expected, context)
            if error:
                contender.fail(error)
                contender.service.stop()
        contenders.append(contender)
    return contenders, expected


# --- rounds, medians, ratios --------------------------------------------------------------------------

T = TypeVar("T")
C = TypeVar("C", bound=Contender)


@dataclass(frozen=True, slots=True)
class Measured(Generic[T]):
    """One load run against one contender, and the CPU its processes used meanwhile."""

    result: T
    server_cpu: float  # seconds of user + system CPU of the contender's processes (not the backend's)


Rounds = dict[str, list[Measured[T] | None]]  # contender -> one per round (None: failed or not measured)


def alternate(
    contenders: Sequence[C], what: str, run: Callable[[C], T], args: argparse.Namespace
) -> Rounds[T]:
    """``args.rounds`` rounds of ``run`` on every available contender, the order rotating."""
    results: Rounds[T] = {c.name: [] for c in contenders}
    for r in range(args.rounds):
        k = r % len(contenders) if contenders else 0
        done: dict[str, Measured[T] | None] = {}
        for c in [*contenders[k:], *contenders[:k]]:
            done[c.name] = None
            if not c.available or c.service is None:
                continue
            try:
                before = cpu_seconds(c.service.pid)
                result = run(c)
                done[c.name] = Measured(result, cpu_seconds(c.service.pid) - before)
            except (WrkError, ServiceError) as e:
                if c.service.alive():
                    tail = c.service.log_tail()
                    c.fail(
                        f"{what} failed in round {r + 1}: {e}" + (f"\nits log ends:\n{tail}" if tail else "")
                    )
            if not c.service.alive():
                tail = c.service.log_tail()
                c.fail(f"{c.service.exit_status()} in round {r + 1}" + (f":\n{tail}" if tail else ""))
        for c in contenders:
            results[c.name].append(done[c.name])
    return results


def plain(rounds: Sequence[Measured[T] | None]) -> list[T | None]:
    return [m.result if m is not None else None for m in rounds]


def why_missing(contenders: Sequence[TlsContender], skipped: Mapping[str, str]) -> str:
    missing = [f"{c.name} unavailable" for c in contenders if not c.available]
    missing += [f"{name} not measured" for name in skipped]
    return ", ".join(missing) or "no round measured both"


def ratio_line(label: str, value: float | None, missing: str, note: str = "") -> str:
    return f"{label} {value:.2f}x{note}" if value is not None else f"{label} n/a ({missing})"


def req_per_sec(m: Measured[WrkResult]) -> float:
    return m.result.requests_per_sec


def transfer(m: Measured[WrkResult]) -> float:
    return m.result.transfer_per_sec


def cpu_per_request(m: Measured[WrkResult]) -> float:
    """Microseconds of the contender's CPU per request wrk completed."""
    return m.server_cpu / m.result.requests * 1e6 if m.result.requests else 0.0


CPU_NOTE = (
    "(CPU µs/req: user + system CPU of the contender's own processes during the run, from /proc,\n"
    " divided by the requests done; the backend's is not counted)"
)


def cpu_ratio_line(
    contenders: Sequence[TlsContender],
    results: Rounds[T],
    key: Callable[[Measured[T]], float],
    unit: str,
    skipped: Mapping[str, str],
) -> str:
    return ratio_line(
        f"distpat / nginx CPU per {unit}:",
        ratio(results, DISTPAT, NGINX, key),
        why_missing(contenders, skipped),
        " (lower is better)",
    )


# --- 1 and 2a: wrk, requests per second ---------------------------------------------------------------


def wrk_runner(
    path: str, wrk: str, args: argparse.Namespace, headers: Sequence[str] = ()
) -> Callable[[TlsContender], WrkResult]:
    def run(c: TlsContender) -> WrkResult:
        return run_wrk_url(
            c.url(path),
            wrk=wrk,
            threads=1,
            connections=args.connections,
            duration=args.duration,
            headers=headers,
        )

    return run


def rate_table(
    contenders: Sequence[Contender], results: Rounds[WrkResult], skipped: Mapping[str, str]
) -> None:
    print(
        f"{'contender':16s} {'req/s':>9s}  {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>7s} {'CPU µs/req':>10s}"
        "   req/s by round"
    )
    for c in contenders:
        rounds = results[c.name]
        rps = median_of(rounds, req_per_sec)
        if c.name in skipped:
            print(f"{c.name:16s} not measured: {skipped[c.name]}")
            continue
        if rps is None:
            print(f"{c.name:16s} {unavailable_line(c)}")
            continue
        p50, p99 = milliseconds(plain(rounds), 50), milliseconds(plain(rounds), 99)
        errors = sum(m.result.errors for m in rounds if m is not None)
        cpu = median_of(rounds, cpu_per_request) or 0.0
        by_round = " ".join(f"{m.result.requests_per_sec:,.0f}" if m else "-" for m in rounds)
        print(f"{c.name:16s} {rps:9,.0f}  {p50:>7s} {p99:>7s} {errors:7d} {cpu:10,.1f}   {by_round}")
        note = error_note(plain(rounds))
        if note:
            print(f"{'':16s} errors: {note} (req/s then counts failed and short responses too)")
        if c.error:
            print(f"{'':16s} then {unavailable_line(c)}")
    print("(p50/p99: medians over rounds of wrk's latency percentiles; errors: socket errors + non-2xx)")


def keep_alive(contenders: Sequence[TlsContender], wrk: str, args: argparse.Namespace) -> Rounds[WrkResult]:
    print(
        f"\n## 1. Keep-alive: GET / (12-byte body) over TLS, wrk -t1 -c{args.connections} "
        f"-d{args.duration}s --latency, median of {args.rounds} alternating rounds"
    )
    results = alternate(contenders, "wrk", wrk_runner(SMALL_PATH, wrk, args), args)
    rate_table(contenders, results, {})
    print(CPU_NOTE)
    value = ratio(results, DISTPAT, NGINX, req_per_sec)
    print(goal_line("distpat / nginx req/s:", value, KEEPALIVE_GOAL, why_missing(contenders, {})))
    print(cpu_ratio_line(contenders, results, cpu_per_request, "request", {}))
    return results


def new_connections(
    contenders: Sequence[TlsContender],
    facts: Mapping[str, TlsFacts],
    keep_alive_results: Rounds[WrkResult],
    wrk: str,
    args: argparse.Namespace,
) -> None:
    print(
        f"\n## 2a. A new connection per request, as wrk makes them: GET / with -H '{CLOSE_HEADER}', "
        f"wrk -t1 -c{args.connections} -d{args.duration}s --latency, median of {args.rounds} "
        "alternating rounds"
    )
    # wrk reconnects when a response says "Connection: close" (it reads the response's header, not its
    # own request's), so the request header alone does nothing against a server that keeps the
    # connection open: then wrk would measure keep-alive again. The probe above checked that each
    # contender answers with Connection: close and closes; one that does not is left out here.
    # wrk then closes its side with SSL_shutdown + SSL_clear, which keeps the TLS session, and offers it
    # on the next connect: a server that resumes sessions does resumed handshakes from then on (checked
    # on nginx's access log while writing this script: all but the first handshake of each of the 32
    # connections were resumed). wrk has no switch against this; 2b measures full handshakes.
    skipped = {
        c.name: f"it does not close the connection after {CLOSE_HEADER} ({facts[c.name].close_note})"
        for c in contenders
        if c.available and c.name in facts and facts[c.name].closes is False
    }
    eligible = [c for c in contenders if c.name not in skipped]
    results = alternate(eligible, "wrk", wrk_runner(SMALL_PATH, wrk, args, [CLOSE_HEADER]), args)
    results.update({name: [] for name in skipped})
    rate_table(contenders, results, skipped)
    print(
        ratio_line(
            "distpat / nginx new connections/s:",
            ratio(results, DISTPAT, NGINX, req_per_sec),
            why_missing(contenders, skipped),
        )
    )
    print(cpu_ratio_line(contenders, results, cpu_per_request, "connection", skipped))
    kind = {True: "resumed", False: "full (it did not resume the session offered)", None: "of unknown kind"}
    for c in contenders:
        closed = median_of(results[c.name], req_per_sec)
        kept = median_of(keep_alive_results[c.name], req_per_sec)
        if closed is not None:
            resumes = facts[c.name].resumes if c.name in facts else None
            print(
                f"  {c.name}: its handshakes here, after the first on each connection, were {kind[resumes]}"
            )
        if closed is not None and kept is not None and closed > 0.8 * kept:
            print(
                f"  warning: {c.name} answered {closed:,.0f} req/s here against {kept:,.0f} with keep-alive: "
                "wrk may not have reconnected for every request"
            )


# --- 2b: full handshakes with openssl s_time ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshakes:
    """One round of parallel ``openssl s_time -new`` clients against one contender."""

    connections: int  # summed over the clients
    seconds: float  # wall time until the last client exited
    bytes_per_connection: int  # as s_time reports it (of the first client)

    @property
    def per_sec(self) -> float:
        return self.connections / self.seconds if self.seconds > 0 else 0.0


def handshakes_per_sec(m: Measured[Handshakes]) -> float:
    return m.result.per_sec


def cpu_per_handshake(m: Measured[Handshakes]) -> float:
    """Microseconds of the contender's CPU per connection s_time completed."""
    return m.server_cpu / m.result.connections * 1e6 if m.result.connections else 0.0


_S_TIME = re.compile(r"(\d+) connections in \d+ real seconds, (\d+) bytes read per connection")


def s_time_runner(openssl: str, args: argparse.Namespace) -> Callable[[TlsContender], Handshakes]:
    def run(c: TlsContender) -> Handshakes:
        argv = [openssl, "s_time", "-connect", f"{LOOPBACK}:{c.port}", "-new", "-www", S_TIME_PATH]
        argv += ["-time", str(args.duration)]
        # s_time stops once time(2) has passed start + duration: after duration to duration + 1 s,
        # so the rate is taken over the wall time of the whole group, not the duration asked for.
        outputs, seconds = run_parallel([argv] * args.handshake_clients, timeout=args.duration + 30)
        counts = [_S_TIME.search(out) for out in outputs]
        if not all(counts):
            bad = next(out for out, m in zip(outputs, counts, strict=True) if m is None)
            raise ServiceError(f"openssl s_time printed no report: {bad.strip()[-300:]!r}")
        matches = [m for m in counts if m is not None]
        return Handshakes(sum(int(m.group(1)) for m in matches), seconds, int(matches[0].group(2)))

    return run


def full_handshakes(
    contenders: Sequence[TlsContender], facts: Mapping[str, TlsFacts], openssl: str, args: argparse.Namespace
) -> None:
    print(
        f"\n## 2b. Full handshakes: {args.handshake_clients} parallel `openssl s_time -new -time "
        f"{args.duration}` clients (a new session each time, one GET / HTTP/1.0 with Host per connection), "
        f"median of {args.rounds} alternating rounds"
    )
    skipped = {
        c.name: f"s_time's request was not answered as it should be ({facts[c.name].http10_note})"
        for c in contenders
        if c.available and c.name in facts and facts[c.name].http10_size is None
    }
    eligible = [c for c in contenders if c.name not in skipped]
    results = alternate(eligible, "openssl s_time", s_time_runner(openssl, args), args)
    results.update({name: [] for name in skipped})
    print(
        f"{'contender':16s} {'handshakes/s':>12s} {'bytes/conn':>10s} {'CPU µs/conn':>11s}"
        "   handshakes/s by round"
    )
    for c in contenders:
        rounds = results[c.name]
        rate = median_of(rounds, handshakes_per_sec)
        if c.name in skipped:
            print(f"{c.name:16s} not measured: {skipped[c.name]}")
            continue
        if rate is None:
            print(f"{c.name:16s} {unavailable_line(c)}")
            continue
        sizes = {m.result.bytes_per_connection for m in rounds if m is not None}
        cpu = median_of(rounds, cpu_per_handshake) or 0.0
        by_round = " ".join(f"{m.result.per_sec:,.0f}" if m else "-" for m in rounds)
        shown = "/".join(map(str, sorted(sizes)))
        print(f"{c.name:16s} {rate:12,.0f} {shown:>10s} {cpu:11,.0f}   {by_round}")
        expected = facts[c.name].http10_size if c.name in facts else None
        if expected is not None and sizes != {expected}:
            print(
                f"{'':16s} note: s_time read {sizes} bytes per connection, the probe's answer had {expected}"
            )
        if c.error:
            print(f"{'':16s} then {unavailable_line(c)}")
    print(
        "(bytes/conn: the whole HTTP/1.0 answer as s_time read it; it checks no status, the probe did.\n"
        " The s_time clients use about as much CPU as the server, on the same cores, which narrows the\n"
        " handshakes/s ratio: CPU µs/conn, the server's own cost per handshake, is the fairer comparison)"
    )
    value = ratio(results, DISTPAT, NGINX, handshakes_per_sec)
    print(ratio_line("distpat / nginx full handshakes/s:", value, why_missing(contenders, skipped)))
    print(cpu_ratio_line(contenders, results, cpu_per_handshake, "full handshake", skipped))


# --- 3: 1 MiB download --------------------------------------------------------------------------------


def download(contenders: Sequence[TlsContender], wrk: str, args: argparse.Namespace) -> None:
    print(
        f"\n## 3. 1 MiB download: GET {LARGE_PATH}, wrk -t1 -c{args.connections} -d{args.duration}s, "
        f"median of {args.rounds} alternating rounds; MiB/s is wrk's Transfer/sec (headers included)"
    )
    results = alternate(contenders, "wrk", wrk_runner(LARGE_PATH, wrk, args), args)
    print(
        f"{'contender':16s} {'MiB/s':>8s} {'req/s':>8s} {'p99 ms':>8s} {'errors':>7s} {'CPU µs/req':>10s}"
        "   MiB/s by round"
    )
    for c in contenders:
        rounds = results[c.name]
        mib = median_of(rounds, transfer)
        if mib is None:
            print(f"{c.name:16s} {unavailable_line(c)}")
            continue
        rps = median_of(rounds, req_per_sec) or 0.0
        errors = sum(m.result.errors for m in rounds if m is not None)
        cpu = median_of(rounds, cpu_per_request) or 0.0
        by_round = " ".join(f"{m.result.transfer_per_sec / 2**20:,.1f}" if m else "-" for m in rounds)
        p99 = milliseconds(plain(rounds), 99)
        print(f"{c.name:16s} {mib / 2**20:8.1f} {rps:8,.0f} {p99:>8s} {errors:7d} {cpu:10,.0f}   {by_round}")
        note = error_note(plain(rounds))
        if note:
            print(f"{'':16s} errors: {note} (MiB/s then counts failed and short responses too)")
        if c.error:
            print(f"{'':16s} then {unavailable_line(c)}")
    print(
        ratio_line(
            "distpat / nginx MiB/s:", ratio(results, DISTPAT, NGINX, transfer), why_missing(contenders, {})
        )
    )
    print(cpu_ratio_line(contenders, results, cpu_per_request, "MiB response", {}))
    nginx = next((c for c in contenders if c.name == NGINX and c.service is not None), None)
    if nginx is not None and nginx.service is not None:
        spilled = nginx.service.log_text().count("buffered to a temporary file")
        if spilled:
            print(f"(nginx, at stock proxy_buffers, spilled {spilled} upstream responses to temp files)")


# --- before the runs: bodies and TLS ------------------------------------------------------------------


def report_checks(
    contenders: Sequence[TlsContender], expected: Mapping[str, bytes], openssl: str, certs: Certs
) -> dict[str, TlsFacts]:
    """Print the body check and each contender's TLS facts; the facts by contender name."""
    print(f"\ncertificates: {certs.summary} (chain and key in the temp dir, passed to both)")
    available = [c for c in contenders if c.available]
    sizes = ", ".join(f"GET {path} -> {len(body):,} bytes" for path, body in expected.items())
    if available:
        names = " and ".join(c.name for c in available)
        same = "both answer" if len(available) > 1 else "answers"
        print(f"bodies: {names} {same} with the backend's exact bytes over verified TLS ({sizes})")
    for c in contenders:
        if not c.available:
            print(f"{c.name}: {unavailable_line(c)}")

    context = ssl.create_default_context(cafile=str(certs.ca))
    facts = {c.name: probe(c, openssl, certs, context) for c in available}
    client = openssl_version(openssl)
    print(
        f"\n## TLS as negotiated: openssl s_client -brief ({client}, default client settings, as wrk's), "
        "and Python ssl probes"
    )
    print(
        f"{'contender':10s} {'protocol':9s} {'cipher':24s} {'group':7s} {'signature':10s} "
        f"{'resumes':8s} {'closes on Connection: close'}"
    )
    yes_no = {True: "yes", False: "no", None: "?"}
    for c in available:
        f = facts[c.name]
        h = f.handshake
        print(
            f"{c.name:10s} {h.get('protocol', '?'):9s} {h.get('cipher', '?'):24s} {h.get('group', '?'):7s} "
            f"{h.get('signature', '?'):10s} {yes_no[f.resumes]:8s} {yes_no[f.closes]}"
            + (f" ({f.close_note})" if f.close_note else "")
        )
        if f.handshake_error:
            print(f"{'':10s} s_client: {f.handshake_error}")
    kinds = {f.key() for f in facts.values()}
    if len(facts) > 1 and len(kinds) == 1:
        print(f"same handshake on both: {' '.join(kinds.pop())}")
    elif len(facts) > 1:
        print("note: the contenders negotiated different handshakes (see above): compare 2a/2b with care")
    resumes = {name: f.resumes for name, f in facts.items()}
    if len(set(resumes.values())) > 1:
        print(
            "note: only some contenders resume sessions, so wrk's reconnections in 2a are resumed handshakes "
            "on some and full ones on others"
        )
    return facts


def openssl_version(openssl: str) -> str:
    """'OpenSSL 3.0.22' from 'OpenSSL 3.0.22 25 Aug 2026 (Library: OpenSSL 3.0.22 25 Aug 2026)'."""
    return " ".join(tool_version([openssl, "version"]).split()[:2])


# --- main ---------------------------------------------------------------------------------------------


_caught: list[int] = []


def _interrupt_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP act as Ctrl-C: unwind through the finally blocks that stop every service."""
    _caught.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 s runs and 2 rounds, for a smoke run")
    p.add_argument(
        "--duration", type=int, default=None, help="seconds per wrk/s_time run (default 4; --quick 1)"
    )
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds, at least 2 (default 3)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument(
        "--handshake-clients", type=int, default=8, help="parallel openssl s_time clients in 2b (default 8)"
    )
    p.add_argument(
        "--key-type",
        choices=("rsa", "ecdsa"),
        default="rsa",
        help="the server key: RSA-2048 (default, as for the anchor) or ECDSA P-256",
    )
    p.add_argument("--distpat", default=None, help="command that runs distpat (default: .venv/bin/distpat)")
    args = p.parse_args()
    args.duration = args.duration or (1 if args.quick else 4)
    args.rounds = max(2, args.rounds or (2 if args.quick else 3))
    if args.duration < 1 or args.connections < 1 or args.handshake_clients < 1:
        p.error("--duration, --connections and --handshake-clients must be at least 1")

    nginx = require_tool("nginx", "nginx-light")
    wrk = require_tool("wrk", "wrk")
    openssl = require_tool("openssl", "openssl")
    if "--with-http_ssl_module" not in tool_output([nginx, "-V"]):
        raise SystemExit(
            f"{nginx} was built without the ssl module: install the Debian package nginx-light, whose "
            "nginx has it (apt-get install nginx-light)"
        )
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt_on_signal)
    raise_nofile_limit()  # before any server starts, so that they inherit it

    print("# distpat benchmark: TLS-terminating sidecar")
    print(describe("distpat", "uvloop", "httptools", "trustme", "cryptography"))
    wrk_version = tool_version([wrk, "-v"]).split(" [")[0]
    print(
        f"tools: {tool_version([nginx, '-v'])}; {wrk_version}; {openssl_version(openssl)}; "
        f"Python ssl {ssl.OPENSSL_VERSION}; servers and load generators share the same cores"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="distpat-bench-") as tmp, contextlib.ExitStack() as stack:
            certs = make_certs(Path(tmp) / "tls", args.key_type)
            contenders, expected = start_all(stack, Path(tmp), nginx, certs, args)
            facts = report_checks(contenders, expected, openssl, certs)
            kept = keep_alive(contenders, wrk, args)
            new_connections(contenders, facts, kept, wrk, args)
            full_handshakes(contenders, facts, openssl, args)
            download(contenders, wrk, args)
    except KeyboardInterrupt:
        signum = _caught[-1] if _caught else signal.SIGINT
        print(f"\ninterrupted by {signal.Signals(signum).name}: every server was stopped", file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
