"""`distpat sidecar` as a real process, driven by real TLS clients.

openssl s_client checks versions, ALPN and SNI; curl checks HTTPS end to end (HSTS, the HTTP redirect,
mTLS and the client-subject header); Python's ssl checks hot reload of certificates on open and new
connections; redis-py talks to a real redis-server through ``--mode tcp``. Certificates are made by
trustme in each test's tmp_path. Only 127.0.0.1 is used, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from cryptography import x509

from tests.httpkit import HOST, Backend, RawClient, Reply, Request
from tests.nutcracker import free_ports
from tests.tlskit import (
    Issuer,
    curl,
    openssl_client,
    overwrite_in_place,
    pem_serial,
    replace_atomically,
    require_binary,
    running_sidecar,
    served_serial,
)

MiB = 1 << 20
SERVER_NAMES = ("a.example.test", "localhost", "127.0.0.1")
# Fast shutdown: a test that fails with a connection open must not wait the default 30 s.
COMMON = ("--shutdown-timeout", "2")


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async def handler(request: Request) -> Reply:
        # The upstream sets its own HSTS: the sidecar's --hsts must replace it, not add a second one.
        return Reply(
            headers=[(b"Strict-Transport-Security", b"max-age=1")],
            body=b"backend saw %s %s" % (request.method, request.target),
        )

    async with Backend(handler) as b:
        yield b


# --------------------------------------------------------------------------
# Reading client output

_NEGOTIATED = re.compile(r"^New, (TLSv1\.[0-3]), Cipher is (\S+)$", re.MULTILINE)
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?\n-----END CERTIFICATE-----\n", re.DOTALL)


def negotiated(result: subprocess.CompletedProcess[str]) -> str | None:
    """The TLS version openssl s_client negotiated, or None when no handshake completed."""
    m = _NEGOTIATED.search(result.stdout)
    return m.group(1) if m else None


def assert_refused_by_server(result: subprocess.CompletedProcess[str], offered: str) -> None:
    """s_client (run with -msg) sent a ClientHello for ``offered`` and the server ended the handshake.

    The client did not refuse by itself (that sends nothing: "no ciphers available"); the
    server answered with no ServerHello, only an alert or a closed connection.
    """
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert re.search(
        rf"^>>> {re.escape(offered)}, Handshake \[length [0-9a-f]+\], ClientHello$", out, re.M
    ), out
    assert "no ciphers available" not in out, out
    assert not re.search(r"^<<< .*ServerHello", out, re.M), out
    assert "Cipher is (NONE)" in out, out
    assert negotiated(result) is None, out
    assert re.search(r"unexpected eof while reading|alert protocol version|handshake failure", out), out


def first_certificate_serial(text: str) -> int:
    """The serial of the first PEM certificate in a client's output."""
    m = _PEM.search(text)
    assert m is not None, text
    return pem_serial(m.group(0).encode())


def split_response(text: str) -> tuple[int, dict[str, list[str]], str]:
    """curl -i output: status, fields (lower-case names), body."""
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return status, fields, body


def seen(request: Request, name: bytes) -> list[bytes]:
    """Every value of field ``name`` in a request the backend received."""
    return [v for k, v in request.headers if k.lower() == name.lower()]


# --------------------------------------------------------------------------
# 1. Versions and ALPN (openssl s_client)


async def test_tls_1_1_is_refused_1_2_and_1_3_accepted_with_alpn(
    tmp_path: Path, issuer: Issuer, backend: Backend
) -> None:
    server = issuer.pair("server", *SERVER_NAMES, common_name="a.example.test")
    (port,) = free_ports(1)
    args = ("--cert", str(server.cert), "--key", str(server.key), "--upstream", backend.url, *COMMON)
    async with running_sidecar(tmp_path, port, *args):
        # SECLEVEL=0 so the client itself is willing to speak TLS 1.1 (OpenSSL 3 is not by default).
        old = await openssl_client(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-msg")
        assert_refused_by_server(old, "TLS 1.1")

        verify = ("-CAfile", str(issuer.ca_path), "-servername", "a.example.test", "-verify_return_error")
        for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            done = await openssl_client(port, flag, "-alpn", "http/1.1", *verify)
            assert done.returncode == 0, done.stdout + done.stderr
            assert negotiated(done) == version, done.stdout
            assert "ALPN protocol: http/1.1" in done.stdout
            assert re.search(r"Verify return code: 0 \(ok\)", done.stdout)
            assert first_certificate_serial(done.stdout) == server.serial

        # A protocol the server does not speak is not an error; it just is not selected.
        h2 = await openssl_client(port, "-tls1_3", "-alpn", "h2", *verify)
        assert negotiated(h2) == "TLSv1.3", h2.stdout
        assert "No ALPN negotiated" in h2.stdout


async def test_tls_min_1_3_refuses_tls_1_2(tmp_path: Path, issuer: Issuer, backend: Backend) -> None:
    server = issuer.pair("server", *SERVER_NAMES)
    (port,) = free_ports(1)
    args = (
        "--cert",
        str(server.cert),
        "--key",
        str(server.key),
        "--upstream",
        backend.url,
        "--tls-min",
        "1.3",
    )
    async with running_sidecar(tmp_path, port, *args, *COMMON):
        refused = await openssl_client(port, "-tls1_2", "-msg")
        assert_refused_by_server(refused, "TLS 1.2")
        accepted = await openssl_client(port, "-tls1_3", "-alpn", "http/1.1", "-CAfile", str(issuer.ca_path))
        assert negotiated(accepted) == "TLSv1.3", accepted.stdout + accepted.stderr
        assert "ALPN protocol: http/1.1" in accepted.stdout


# --------------------------------------------------------------------------
# 2. SNI


async def test_sni_picks_the_certificate_by_name(tmp_path: Path, issuer: Issuer, backend: Backend) -> None:
    a = issuer.pair("a", "a.example.test", common_name="a.example.test")
    b = issuer.pair("b", "*.b.example.test", common_name="*.b.example.test")
    ca = str(issuer.ca_path)
    port, port_b_first = free_ports(2)
    common = ("--upstream", backend.url, *COMMON)
    a_args = ("--cert", str(a.cert), "--key", str(a.key))
    b_args = ("--cert", str(b.cert), "--key", str(b.key))
    async with (
        running_sidecar(tmp_path, port, *a_args, *b_args, *common),
        running_sidecar(tmp_path, port_b_first, *b_args, *a_args, *common),
    ):
        expected = {
            "a.example.test": a.serial,
            "A.Example.TEST": a.serial,  # names compare case-insensitively
            "x.b.example.test": b.serial,  # the wildcard
            "b.example.test": a.serial,  # a wildcard does not cover its own parent: no match, the first
            "deep.x.b.example.test": a.serial,  # nor two labels: no match
            "nothing.test": a.serial,
        }
        for name, serial in expected.items():
            done = await openssl_client(port, "-servername", name, "-CAfile", ca)
            assert negotiated(done) is not None, (name, done.stdout + done.stderr)
            assert first_certificate_serial(done.stdout) == serial, name
        no_sni = await openssl_client(port, "-noservername", "-CAfile", ca)
        assert first_certificate_serial(no_sni.stdout) == a.serial

        # The first certificate is the fallback, whichever it is.
        for name in ("nothing.test", "b.example.test"):
            done = await openssl_client(port_b_first, "-servername", name, "-CAfile", ca)
            assert first_certificate_serial(done.stdout) == b.serial, name
        done = await openssl_client(port_b_first, "-servername", "a.example.test", "-CAfile", ca)
        assert first_certificate_serial(done.stdout) == a.serial

        # curl, verifying: the wildcard certificate is served and accepted for a name under it ...
        got = await curl(
            "--resolve",
            f"x.b.example.test:{port}:{HOST}",
            "--cacert",
            ca,
            "-o",
            os.devnull,
            "-w",
            "%{http_code}\n%{certs}",
            f"https://x.b.example.test:{port}/wild",
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout.startswith("200\n")
        assert first_certificate_serial(got.stdout) == b.serial
        # ... and a name nothing covers gets the first certificate, which curl rightly rejects.
        miss = await curl(
            "--resolve", f"nothing.test:{port}:{HOST}", "--cacert", ca, f"https://nothing.test:{port}/"
        )
        assert miss.returncode == 60, miss.stderr  # CURLE_PEER_FAILED_VERIFICATION
        assert "nothing.test" in miss.stderr
    assert [r.target for r in backend.requests] == [b"/wild"]


# --------------------------------------------------------------------------
# 3. curl end to end, HSTS, the HTTP redirect


async def test_curl_end_to_end_with_hsts_and_http_redirect(
    tmp_path: Path, issuer: Issuer, backend: Backend
) -> None:
    server = issuer.pair("server", *SERVER_NAMES)
    ca = str(issuer.ca_path)
    port, plain = free_ports(2)
    args = ("--cert", str(server.cert), "--key", str(server.key), "--upstream", backend.url)
    extra = ("--hsts", "600", "--redirect-http", f"{HOST}:{plain}", *COMMON)
    async with running_sidecar(tmp_path, port, *args, *extra, also=[plain]):
        # A client's own X-Forwarded-Proto is replaced, not passed on.
        got = await curl(
            "-i", "-H", "X-Forwarded-Proto: http", "--cacert", ca, f"https://localhost:{port}/path?x=1"
        )
        assert got.returncode == 0, got.stderr
        status, fields, body = split_response(got.stdout)
        assert status == 200
        assert body == "backend saw GET /path?x=1"
        assert fields["strict-transport-security"] == ["max-age=600"]  # the upstream's max-age=1 replaced
        [request] = backend.requests
        assert seen(request, b"X-Forwarded-Proto") == [b"https"]
        assert request.header(b"Host") == b"localhost:%d" % port

        redirected = await curl("-i", f"http://{HOST}:{plain}/path?q")
        assert redirected.returncode == 0, redirected.stderr
        status, fields, _ = split_response(redirected.stdout)
        assert status == 301
        assert fields["location"] == [f"https://{HOST}:{port}/path?q"]
        assert "strict-transport-security" not in fields  # never over plain HTTP (RFC 6797 section 7.2)
        posted = await curl("-i", "-d", "x=1", f"http://{HOST}:{plain}/form")
        status, fields, _ = split_response(posted.stdout)
        assert status == 308  # keeps the method and body
        assert fields["location"] == [f"https://{HOST}:{port}/form"]

        # Following the redirect ends at the backend over verified HTTPS (the certificate covers the IP).
        followed = await curl("-L", "--cacert", ca, f"http://{HOST}:{plain}/path?q")
        assert followed.returncode == 0, followed.stderr
        assert followed.stdout == "backend saw GET /path?q"
    assert [r.target for r in backend.requests] == [b"/path?x=1", b"/path?q"]  # redirects forward nothing


async def test_a_client_sent_subject_header_is_dropped_without_client_ca(
    tmp_path: Path, issuer: Issuer, backend: Backend
) -> None:
    server = issuer.pair("server", *SERVER_NAMES)
    (port,) = free_ports(1)
    args = ("--cert", str(server.cert), "--key", str(server.key), "--upstream", backend.url, *COMMON)
    async with running_sidecar(tmp_path, port, *args):
        for field in ("X-Client-Cert-Subject: forged", "x-client-cert-subject: CN=admin"):
            got = await curl("-H", field, "--cacert", str(issuer.ca_path), f"https://localhost:{port}/")
            assert got.returncode == 0, got.stderr
    assert len(backend.requests) == 2
    for request in backend.requests:
        assert b"x-client-cert-subject" not in request.header_names(), request.headers
        assert seen(request, b"X-Forwarded-Proto") == [b"https"]


# --------------------------------------------------------------------------
# 4. mTLS


async def test_client_ca_requires_a_certificate_and_passes_its_subject(
    tmp_path: Path, issuer: Issuer, backend: Backend
) -> None:
    server = issuer.pair("server", *SERVER_NAMES)
    client = issuer.pair(
        "client",
        "client@example.test",
        common_name="client one",
        organization_name="Clients, Inc.",
        organization_unit_name="QA",
    )
    stranger_issuer = Issuer(tmp_path, organization="another CA")
    stranger = stranger_issuer.pair("stranger", "client@example.test", common_name="client one")
    ca = str(issuer.ca_path)
    (port,) = free_ports(1)
    args = ("--cert", str(server.cert), "--key", str(server.key), "--upstream", backend.url)
    async with running_sidecar(tmp_path, port, *args, "--client-ca", ca, *COMMON):
        url = f"https://localhost:{port}/mtls"
        # No certificate: TLS 1.3 fails after curl's side of the handshake, TLS 1.2 during it.
        for version in ("--tlsv1.3", "--tlsv1.2 --tls-max 1.2"):
            refused = await curl(*version.split(), "--cacert", ca, url)
            assert refused.returncode in (35, 52, 56), (version, refused.returncode, refused.stderr)
        # A certificate from a CA the sidecar does not trust.
        untrusted = await curl("--cacert", ca, "--cert", str(stranger.cert), "--key", str(stranger.key), url)
        assert untrusted.returncode in (35, 52, 56), (untrusted.returncode, untrusted.stderr)
        assert backend.requests == []

        for forged in ("X-Client-Cert-Subject: forged", "x-client-cert-subject: CN=admin"):
            got = await curl(
                "-H", forged, "--cacert", ca, "--cert", str(client.cert), "--key", str(client.key), url
            )
            assert got.returncode == 0, got.stderr
            assert got.stdout == "backend saw GET /mtls"
        # TLS 1.2 with a client certificate too.
        got = await curl(
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "--cacert",
            ca,
            "--cert",
            str(client.cert),
            "--key",
            str(client.key),
            url,
        )
        assert got.returncode == 0, got.stderr

        # A resumed session (no Certificate messages this time) still carries the client's subject.
        resumed_request = b"GET /resumed HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        identity = (
            "-CAfile",
            ca,
            "-servername",
            "localhost",
            "-cert",
            str(client.cert),
            "-key",
            str(client.key),
        )
        for version, label in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            session = tmp_path / f"session{version}.pem"
            first = await openssl_client(
                port, version, *identity, "-ign_eof", "-sess_out", str(session), stdin=resumed_request
            )
            assert f"New, {label}," in first.stdout, first.stdout + first.stderr
            again = await openssl_client(
                port, version, *identity, "-ign_eof", "-sess_in", str(session), stdin=resumed_request
            )
            assert f"Reused, {label}," in again.stdout, again.stdout + again.stderr
            for done in (first, again):
                assert "backend saw GET /resumed" in done.stdout

    expected = "CN=client one,OU=QA,O=Clients\\, Inc."
    assert x509.load_pem_x509_certificate(client.cert_pem).subject.rfc4514_string() == expected
    assert len(backend.requests) == 3 + 4
    for request in backend.requests:
        assert seen(request, b"X-Client-Cert-Subject") == [expected.encode()], request.headers


# --------------------------------------------------------------------------
# 5. Hot reload


async def wait_for_serial(
    port: int, ca: Path, server_name: str | None, serial: int, timeout: float = 10.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await served_serial(port, ca, server_name)
        if got == serial:
            return
        if loop.time() > deadline:
            raise AssertionError(f"still serving serial {got:x}, not {serial:x}, after {timeout} s")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def tls_connection(port: int, ca: Path, server_name: str) -> AsyncIterator[RawClient]:
    ctx = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=server_name), 10
    )
    client = RawClient(reader, writer)
    try:
        yield client
    finally:
        await client.close()


def connection_serial(client: RawClient) -> int:
    der = client.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def get(client: RawClient, path: str) -> int:
    await client.send(b"GET %s HTTP/1.1\r\nHost: reload.example.test\r\n\r\n" % path.encode())
    [response] = await client.read_responses(1, timeout=10)
    return response.status


RELOAD_NAMES = ("reload.example.test", "127.0.0.1")


async def test_certificate_files_replaced_on_disk_are_served_to_new_connections(
    tmp_path: Path, issuer: Issuer, backend: Backend
) -> None:
    live = issuer.pair("live", *RELOAD_NAMES)
    ca = issuer.ca_path
    (port,) = free_ports(1)
    args = ("--cert", str(live.cert), "--key", str(live.key), "--upstream", backend.url, *COMMON)
    async with (
        running_sidecar(tmp_path, port, *args) as sidecar,
        tls_connection(port, ca, "reload.example.test") as old,
    ):
        assert await get(old, "/before") == 200
        assert connection_serial(old) == live.serial
        assert await served_serial(port, ca, None) == live.serial

        cert_pem, key_pem, new_serial = issuer.issue(*RELOAD_NAMES)
        replace_atomically(live.key, key_pem)
        replace_atomically(live.cert, cert_pem)
        await wait_for_serial(port, ca, "reload.example.test", new_serial)
        assert await served_serial(port, ca, None) == new_serial  # no SNI: the (new) first certificate
        assert "TLS certificates reloaded (files changed)" in sidecar.log()

        # The connection made before the reload goes on, with the certificate it was made with.
        assert await get(old, "/after") == 200
        assert connection_serial(old) == live.serial
    assert [r.target for r in backend.requests] == [b"/before", b"/after"]


async def test_sighup_reloads_and_a_broken_pair_is_refused(
    tmp_path: Path, issuer: Issuer, backend: Backend
) -> None:
    live = issuer.pair("live", *RELOAD_NAMES)
    ca = issuer.ca_path
    (port,) = free_ports(1)
    args = ("--cert", str(live.cert), "--key", str(live.key), "--upstream", backend.url, *COMMON)
    async with running_sidecar(tmp_path, port, *args) as sidecar:
        assert await served_serial(port, ca, "reload.example.test") == live.serial

        # Rewritten in place with the same size and mtime, so the file watch (almost surely) misses it
        # and SIGHUP is what loads it.
        c_cert, c_key, c_serial = issuer.issue(*RELOAD_NAMES)
        overwrite_in_place(live.cert, c_cert)
        overwrite_in_place(live.key, c_key)
        mark = len(sidecar.log())
        sidecar.process.send_signal(signal.SIGHUP)
        await sidecar.wait_for_log("TLS certificates reloaded (SIGHUP)", after=mark)
        assert await served_serial(port, ca, "reload.example.test") == c_serial
        assert await served_serial(port, ca, None) == c_serial

        # A key that does not match the certificate, noticed by the file watch: refused, C stays.
        d_cert, d_key, d_serial = issuer.issue(*RELOAD_NAMES)
        mark = len(sidecar.log())
        replace_atomically(live.key, d_key)
        tail = await sidecar.wait_for_log("TLS reload (files changed) refused", after=mark)
        assert "KEY_VALUES_MISMATCH" in tail or "key values mismatch" in tail, tail
        assert await served_serial(port, ca, "reload.example.test") == c_serial
        assert await served_serial(port, ca, None) == c_serial

        # A certificate file of garbage, then SIGHUP: refused again.
        replace_atomically(live.cert, b"this is not a certificate\n")
        mark = len(sidecar.log())
        sidecar.process.send_signal(signal.SIGHUP)
        await sidecar.wait_for_log("TLS reload (SIGHUP) refused", after=mark)
        assert await served_serial(port, ca, "reload.example.test") == c_serial
        got = await curl(
            "--cacert",
            str(ca),
            "--resolve",
            f"reload.example.test:{port}:{HOST}",
            f"https://reload.example.test:{port}/still",
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout == "backend saw GET /still"

        # The matching certificate arrives: the pair is complete and loads.
        replace_atomically(live.cert, d_cert)
        await wait_for_serial(port, ca, "reload.example.test", d_serial)
        assert sidecar.process.poll() is None


async def test_a_deleted_key_file_is_refused_and_named_in_the_log(
    tmp_path: Path, issuer: Issuer, backend: Backend
) -> None:
    live = issuer.pair("live", *RELOAD_NAMES)
    ca = issuer.ca_path
    (port,) = free_ports(1)
    args = ("--cert", str(live.cert), "--key", str(live.key), "--upstream", backend.url, *COMMON)
    async with running_sidecar(tmp_path, port, *args) as sidecar:
        mark = len(sidecar.log())
        live.key.unlink()
        tail = await sidecar.wait_for_log("TLS reload (files changed) refused", after=mark)
        assert await served_serial(port, ca, "reload.example.test") == live.serial
        [line] = [line for line in tail.splitlines() if "refused" in line]
        assert str(live.key) in line, line


# --------------------------------------------------------------------------
# 6. TCP mode in front of a real redis-server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[int]:
    """A real redis-server on 127.0.0.1 (no persistence), stopped after the test."""
    binary = require_binary("redis-server", "redis-server")
    (port,) = free_ports(1)
    workdir = tmp_path / "redis"
    workdir.mkdir()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    with open(workdir / "redis.log", "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise AssertionError(f"redis-server exited: {(workdir / 'redis.log').read_text()}")
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not accept on {port} within 10 s") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def test_tcp_mode_carries_redis_over_tls(tmp_path: Path, issuer: Issuer, redis_server: int) -> None:
    server = issuer.pair("server", *SERVER_NAMES)
    (port,) = free_ports(1)
    args = ("--mode", "tcp", "--upstream", f"tcp://{HOST}:{redis_server}")
    async with running_sidecar(
        tmp_path, port, *args, "--cert", str(server.cert), "--key", str(server.key), *COMMON
    ) as sidecar:
        client = redis.Redis(
            host=HOST, port=port, ssl=True, ssl_ca_certs=str(issuer.ca_path), socket_timeout=30
        )
        try:
            assert await client.ping() is True
            assert await client.set("greeting", "hello") is True
            assert await client.get("greeting") == b"hello"

            big = os.urandom(4 * MiB)
            assert await client.set("big", big) is True
            assert await client.strlen("big") == len(big)
            assert await client.get("big") == big

            count = 3000
            pipe = client.pipeline(transaction=False)
            for i in range(count):
                pipe.set(f"k{i}", i)
                pipe.incr("counter")
            results = await pipe.execute()
            assert results[0::2] == [True] * count
            assert results[1::2] == list(range(1, count + 1))
            assert await client.mget([f"k{i}" for i in (0, 1234, count - 1)]) == [
                b"0",
                b"1234",
                b"%d" % (count - 1),
            ]

            # The tunnel ends in plain TCP at redis: the server sees a client from 127.0.0.1.
            clients = await client.client_list()
            assert any(c["addr"].startswith(f"{HOST}:") for c in clients)

            # SIGHUP reloads in TCP mode too; the open tunnel goes on.
            tunnel = await client.client_id()
            cert_pem, key_pem, new_serial = issuer.issue(*SERVER_NAMES)
            overwrite_in_place(server.cert, cert_pem)
            overwrite_in_place(server.key, key_pem)
            mark = len(sidecar.log())
            sidecar.process.send_signal(signal.SIGHUP)
            await sidecar.wait_for_log("TLS certificates reloaded (SIGHUP)", after=mark)
            assert await served_serial(port, issuer.ca_path, None) == new_serial
            assert await client.get("greeting") == b"hello"
            assert await client.client_id() == tunnel  # the same connection to redis
        finally:
            await client.aclose()


# --------------------------------------------------------------------------
# 7. Bad input at startup


def run_sidecar(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "distpat",
            "sidecar",
            "--listen",
            f"{HOST}:1",
            "--upstream",
            f"http://{HOST}:1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("DISTPAT_")},
        check=False,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("distpat: error: "), done.stderr
    assert done.stderr.endswith("\n"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)


def test_a_bad_pair_at_startup_is_status_2_and_one_line(tmp_path: Path, issuer: Issuer) -> None:
    a = issuer.pair("a", *SERVER_NAMES)
    b = issuer.pair("b", *SERVER_NAMES)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert_one_line_error(run_sidecar("--cert", str(a.cert), "--key", str(b.key)), str(a.cert), "mismatch")
    assert_one_line_error(run_sidecar("--cert", str(garbage), "--key", str(a.key)), str(garbage))
    # The second pair is checked too, not only the first.
    pairs = ("--cert", str(a.cert), "--key", str(a.key), "--cert", str(b.cert), "--key", str(a.key))
    assert_one_line_error(run_sidecar(*pairs), str(b.cert), "mismatch")
    missing_ca = tmp_path / "no-such-ca.pem"
    assert_one_line_error(
        run_sidecar("--cert", str(a.cert), "--key", str(a.key), "--client-ca", str(missing_ca)),
        str(missing_ca),
    )
    assert_one_line_error(run_sidecar("--cert", str(a.cert)), "1 --cert but 0 --key")
    assert_one_line_error(
        run_sidecar("--cert", str(a.cert), "--key", str(a.key), "--tls-min", "1.1"), "--tls-min"
    )


@pytest.mark.parametrize("which", ["cert", "key"])
def test_a_missing_certificate_or_key_file_is_named(tmp_path: Path, issuer: Issuer, which: str) -> None:
    a = issuer.pair("a", *SERVER_NAMES)
    missing = tmp_path / f"no-such-{which}.pem"
    cert = missing if which == "cert" else a.cert
    key = missing if which == "key" else a.key
    done = run_sidecar("--cert", str(cert), "--key", str(key))
    assert_one_line_error(done, str(missing))


async def test_sighup_switches_the_sidecars_upstream_on_an_open_tls_connection(
    tmp_path: Path, issuer: Issuer
) -> None:
    async def named(body: bytes) -> Backend:
        async def handler(request: Request) -> Reply:
            return Reply(body=body)

        return Backend(handler)

    server = issuer.pair("server", *RELOAD_NAMES)
    (port,) = free_ports(1)
    config = tmp_path / "sidecar.toml"

    def write(upstream: str) -> None:
        pair = f'cert = ["{server.cert}"]\nkey = ["{server.key}"]\n'
        config.write_text(f'{pair}upstream = ["{upstream}"]\nshutdown_timeout = 2\n')

    async with await named(b"A") as a, await named(b"B") as b:
        write(a.url)
        async with (
            running_sidecar(tmp_path, port, "--config", str(config)) as sidecar,
            tls_connection(port, issuer.ca_path, "reload.example.test") as client,
        ):
            await client.send(b"GET / HTTP/1.1\r\nHost: reload.example.test\r\n\r\n")
            [first] = await client.read_responses(1, timeout=10)
            write(b.url)
            mark = len(sidecar.log())
            sidecar.process.send_signal(signal.SIGHUP)
            await sidecar.wait_for_log("configuration reloaded", after=mark)
            await client.send(b"GET / HTTP/1.1\r\nHost: reload.example.test\r\n\r\n")
            [second] = await client.read_responses(1, timeout=10)
    assert (first.body, second.body) == (b"A", b"B")
