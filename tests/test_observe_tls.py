"""Refused TLS handshakes are counted by reason, and certificate expiry is a gauge (`distpat sidecar`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from tests.httpkit import HOST, Backend
from tests.nutcracker import free_ports
from tests.test_admin import Samples, sample, samples_of
from tests.tlskit import Issuer, openssl_client, running_sidecar


async def scrape(port: int) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    return samples_of(await asyncio.to_thread(get))


def python_handshake(port: int, ca: Path, version: ssl.TLSVersion) -> None:
    """A TLS client offering only ``version`` and no client certificate; reads until refused."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ctx.maximum_version = version
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        contextlib.suppress(ssl.SSLError, OSError),
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        tls.recv(1024)  # TLS 1.3: the server's refusal arrives after the client's side is done


def plain_http(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with contextlib.suppress(OSError):
            raw.recv(1024)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_refused_handshakes_are_counted_by_reason(tmp_path: Path, loop: str) -> None:
    issuer = Issuer(tmp_path)
    server = issuer.pair("server", "localhost", "127.0.0.1")
    port, admin = free_ports(2)
    async with Backend() as backend:
        args = ("--cert", str(server.cert), "--key", str(server.key), "--upstream", backend.url)
        more = ("--client-ca", str(issuer.ca_path), "--admin", f"{HOST}:{admin}", "--loop", loop)
        async with running_sidecar(tmp_path, port, *args, *more, also=(admin,)) as sidecar:
            before = await scrape(admin)
            old = await openssl_client(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
            assert old.returncode != 0
            await asyncio.to_thread(python_handshake, port, issuer.ca_path, ssl.TLSVersion.TLSv1_3)
            await asyncio.to_thread(python_handshake, port, issuer.ca_path, ssl.TLSVersion.TLSv1_2)
            await asyncio.to_thread(plain_http, port)
            deadline = time.monotonic() + 10
            while True:
                after = await scrape(admin)
                failures = {
                    dict(labels)["reason"]: value
                    for (name, labels), value in after.items()
                    if name == "distpat_tls_handshake_failures_total"
                }
                if sum(failures.values()) >= 4 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            log = sidecar.log()
        assert backend.requests == []
    assert not any(name == "distpat_tls_handshake_failures_total" for name, _ in before)
    assert failures == {"protocol_version": 1, "no_client_certificate": 2, "not_tls": 1}, log
    assert "TLS handshake refused (no_client_certificate)" in log
    not_after = x509.load_pem_x509_certificate(server.cert_pem).not_valid_after_utc.timestamp()
    expiry = sample(
        after,
        "distpat_tls_certificate_expiry_seconds",
        certificate=str(server.cert),
        names="localhost/127.0.0.1",
    )
    assert abs(expiry - (not_after - time.time())) < 60


def test_the_expiry_gauge_follows_a_reload(tmp_path: Path) -> None:
    import datetime

    import trustme

    from distpat.net.metrics import ProxyMetrics
    from distpat.net.tls import CertificateStore, TLSOptions
    from tests.test_tls_store import write_pair

    ca = trustme.CA()
    pair = write_pair(ca, tmp_path, "site", "old.example.test")
    store = CertificateStore(TLSOptions(pairs=(pair,)))
    metrics = ProxyMetrics()
    metrics.watch_tls(store)
    before = samples_of(metrics.render()[0].decode())
    soon = ca.issue_cert(
        "new.example.test", not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    )
    (tmp_path / "site.pem").write_bytes(b"".join(blob.bytes() for blob in soon.cert_chain_pems))
    (tmp_path / "site.key").write_bytes(soon.private_key_pem.bytes())
    assert store.reload("test")
    after = samples_of(metrics.render()[0].decode())
    old = sample(
        before, "distpat_tls_certificate_expiry_seconds", certificate=pair[0], names="old.example.test"
    )
    new = sample(
        after, "distpat_tls_certificate_expiry_seconds", certificate=pair[0], names="new.example.test"
    )
    assert old > 30 * 86400  # trustme's default validity is years
    assert 86400 < new <= 2 * 86400
    assert (
        "distpat_tls_certificate_expiry_seconds",
        frozenset({("certificate", pair[0]), ("names", "old.example.test")}),
    ) not in after


async def test_tcp_mode_tunnels_are_spliced_and_counted(tmp_path: Path) -> None:
    from distpat.net.tcp import TcpProxyConfig, TcpProxyServer
    from distpat.net.tls import TLSOptions

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    issuer = Issuer(tmp_path)
    pair = issuer.pair("server", "localhost")
    upstream = await asyncio.start_server(echo, HOST, 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    config = TcpProxyConfig(
        listen=(HOST, 0),
        upstream=(HOST, upstream_port),
        tls=TLSOptions(pairs=((str(pair.cert), str(pair.key)),)),
    )
    server = TcpProxyServer(config)
    await server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(issuer.ca_path))
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=ctx, server_hostname="localhost"
        )
        payload = bytes(range(256)) * 8192  # 2 MiB there and back
        writer.write(payload)
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
        assert got == payload
        assert len(server.tunnels) == 1
        writer.close()
        for _ in range(100):
            if not server.tunnels:
                break
            await asyncio.sleep(0.05)
        s = samples_of(server.metrics.render()[0].decode())
        assert not server.tunnels
        assert sample(s, "distpat_open_connections") == 0
        assert sample(s, "distpat_connections_total") == 1
    finally:
        await server.shutdown(1)
        upstream.close()
        await upstream.wait_closed()


def test_a_burst_of_refused_handshakes_is_counted_whole_and_logged_once_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port scan is a refused handshake a connection: every one counted, one line a second logged."""
    from distpat.net import tls
    from distpat.net.ratelog import RateLog

    issuer = Issuer(tmp_path)
    server = issuer.pair("server", "localhost", "127.0.0.1")
    store = tls.CertificateStore(tls.TLSOptions(pairs=((str(server.cert), str(server.key)),)))
    now = [1000.0]
    monkeypatch.setattr(tls, "REFUSALS_LOG", RateLog(tls.log, clock=lambda: now[0]))
    caplog.set_level(logging.INFO, logger="distpat.tls")

    def refuse_one() -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = store.context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with pytest.raises(ssl.SSLError):
            obj.do_handshake()

    for _ in range(200):  # within one second of the fake clock
        refuse_one()
    now[0] += 1.5
    refuse_one()
    lines = [r.getMessage() for r in caplog.records if "TLS handshake refused" in r.getMessage()]
    assert store.handshake_failures == {"not_tls": 201}
    assert len(lines) == 2, lines
    assert lines[0].startswith("TLS handshake refused (not_tls)")
    assert lines[1].endswith("(and 199 more since the last line)")
