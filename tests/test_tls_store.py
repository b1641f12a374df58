"""The sidecar's certificate store: SNI choice, reload on change, refusal of a broken pair."""

from __future__ import annotations

import logging
import os
import re
import ssl
from pathlib import Path

import pytest
import trustme

from distpat.config.sidecar import build_sidecar_config
from distpat.errors import ConfigError
from distpat.net.tcp import TcpProxyConfig
from distpat.net.tls import CertificateStore, TLSOptions, certificate_info


def write_pair(ca: trustme.CA, directory: Path, stem: str, *names: str) -> tuple[str, str]:
    cert = ca.issue_cert(*names)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    # written next to the live files, then renamed over them: the way to change a pair atomically
    tmp_cert, tmp_key = directory / f".{stem}.pem.new", directory / f".{stem}.key.new"
    tmp_cert.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    tmp_key.write_bytes(cert.private_key_pem.bytes())
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)
    return str(cert_path), str(key_path)


class FakeSSLObject:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context


def test_sni_chooses_by_name_and_falls_back_to_the_first(tmp_path: Path) -> None:
    ca = trustme.CA()
    first = write_pair(ca, tmp_path, "a", "a.example.test")
    second = write_pair(ca, tmp_path, "b", "*.b.example.test")
    store = CertificateStore(TLSOptions(pairs=(first, second)))
    for name, expected in [("x.b.example.test", 1), ("a.example.test", 0), ("other.test", 0), (None, 0)]:
        obj = FakeSSLObject(store.context)
        store._on_sni(obj, name, store.context)  # type: ignore[arg-type]
        assert obj.context is store.served[expected].context


def test_a_changed_pair_is_reloaded_and_a_broken_one_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    pair = write_pair(ca, tmp_path, "site", "localhost")
    store = CertificateStore(TLSOptions(pairs=(pair,)))
    serial = store.served[0].serial
    assert not store.check()  # nothing changed

    write_pair(ca, tmp_path, "site", "localhost")
    assert store.check()
    assert store.served[0].serial != serial
    assert store.served[0].serial == certificate_info(pair[0])[1]
    in_service = store.served

    Path(pair[1]).write_bytes(trustme.CA().issue_cert("localhost").private_key_pem.bytes())  # wrong key
    with caplog.at_level(logging.ERROR, logger="distpat.tls"):
        assert not store.check()
    assert store.served is in_service
    assert "refused" in caplog.text
    assert "stay" in caplog.text
    assert not store.check()  # refused once per change, not on every look

    Path(pair[0]).write_bytes(b"not a certificate")
    assert not store.reload("SIGHUP")
    assert store.served is in_service


def test_bad_pairs_stop_the_start(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, _ = write_pair(ca, tmp_path, "a", "localhost")
    _, other_key = write_pair(ca, tmp_path, "b", "localhost")
    with pytest.raises(ConfigError, match="certificate"):
        CertificateStore(TLSOptions(pairs=((cert, other_key),)))
    with pytest.raises(ConfigError, match="no such file"):
        CertificateStore(TLSOptions(pairs=((str(tmp_path / "missing.pem"), other_key),)))
    with pytest.raises(ConfigError, match="at least one"):
        CertificateStore(TLSOptions(pairs=()))


def test_sidecar_options(tmp_path: Path) -> None:
    base = {"listen": "127.0.0.1:8443", "cert": ["c.pem"], "key": ["k.pem"]}
    config, _ = build_sidecar_config(
        {**base, "upstream": ["http://127.0.0.1:8080"], "hsts": "600"}, environ={}
    )
    assert not isinstance(config, TcpProxyConfig)
    assert config.settings.scheme == "https"
    assert config.settings.response_fields == ((b"Strict-Transport-Security", b"max-age=600"),)
    assert config.tls is not None
    assert config.tls.alpn == ("http/1.1",)

    tcp, _ = build_sidecar_config({**base, "upstream": ["tcp://127.0.0.1:6379"], "mode": "tcp"}, environ={})
    assert isinstance(tcp, TcpProxyConfig)
    assert tcp.upstream == ("127.0.0.1", 6379)
    assert tcp.tls.alpn == ()

    errors = [
        ({**base, "upstream": ["tcp://127.0.0.1:6379"]}, "needs --mode tcp"),
        ({**base, "upstream": ["http://127.0.0.1:1"], "mode": "tcp"}, "tcp://"),
        ({**base, "upstream": ["tcp://127.0.0.1:1"], "mode": "tcp", "hsts": "5"}, "--mode http only"),
        ({**base, "key": ["a", "b"], "upstream": ["http://127.0.0.1:1"]}, "one key for each"),
        ({"listen": "127.0.0.1:1", "upstream": ["http://127.0.0.1:1"]}, "no certificate"),
        ({**base, "upstream": ["http://127.0.0.1:1"], "tls_min": "1.1"}, "1.2, 1.3"),
        ({**base, "upstream": ["http://127.0.0.1:1"], "hsts": "-1"}, "at least 0"),
    ]
    for flags, message in errors:
        with pytest.raises(ConfigError, match=message):
            build_sidecar_config(flags, environ={})


@pytest.mark.parametrize(
    ("replacement", "said"),
    [
        ("encrypted", "the private key is encrypted (passphrase-protected)"),
        ("certificate", "holds a certificate, not a private key"),
    ],
)
def test_a_key_swapped_on_disk_is_refused_plainly_and_never_prompts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, replacement: str, said: str
) -> None:
    """A reload reads the files as a start does: the old pair stays in service, the log says why
    (not OpenSSL's "PEM lib"), and an encrypted key is refused without asking for a passphrase."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ca = trustme.CA()
    cert_path, key_path = write_pair(ca, tmp_path, "site", "localhost")
    store = CertificateStore(TLSOptions(pairs=((cert_path, key_path),)))
    in_service = store.served
    if replacement == "encrypted":
        key = load_pem_private_key(Path(key_path).read_bytes(), password=None)
        Path(key_path).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
    else:
        Path(key_path).write_bytes(Path(cert_path).read_bytes())
    with caplog.at_level(logging.WARNING):
        assert not store.reload("test")
    assert store.served is in_service
    assert any(said in record.getMessage() and key_path in record.getMessage() for record in caplog.records)
    with pytest.raises(ConfigError, match=re.escape(said)):
        CertificateStore(TLSOptions(pairs=((cert_path, key_path),)))
