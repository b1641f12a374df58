"""PEM mix-ups in the sidecar's --cert/--key/--client-ca files get a message that says what is wrong.

Each case is checked through distpat.net.pem and through the real `distpat sidecar -t`, whose one
line on standard error must name the file and say what it holds instead (never OpenSSL's "PEM lib").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from distpat.errors import ConfigError
from distpat.net.pem import check_pair, check_tls_files, pem_labels
from distpat.net.tls import TLSOptions


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def files(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    other = ca.issue_cert("localhost")
    key_pem = leaf.private_key_pem.bytes()
    key = load_pem_private_key(key_pem, password=None)
    encrypted_pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    encrypted_traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = leaf.cert_chain_pems[0].bytes()
    return {
        "cert": write(tmp_path / "tls.crt", cert_pem),
        "key": write(tmp_path / "tls.key", key_pem),
        "both": write(tmp_path / "both.pem", cert_pem + key_pem),
        "other_key": write(tmp_path / "other.key", other.private_key_pem.bytes()),
        "enc8": write(tmp_path / "enc8.key", encrypted_pkcs8),
        "enc1": write(tmp_path / "enc1.key", encrypted_traditional),
        "der": write(tmp_path / "key.der", der),
        "text": write(tmp_path / "notes.txt", b"hello\n"),
        "csr": write(
            tmp_path / "req.pem",
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ),
        "ca": write(tmp_path / "ca.pem", ca.cert_pem.bytes()),
    }


CASES = [
    # (cert, key, what the message must say)
    (
        "key",
        "key",
        "--cert {tls.key}: holds a private key, not a certificate (are --cert and --key swapped?)",
    ),
    (
        "cert",
        "cert",
        "--key {tls.crt}: holds a certificate, not a private key (are --cert and --key swapped?)",
    ),
    ("key", "cert", "--cert {tls.key}: holds a private key, not a certificate"),
    ("cert", "enc8", "--key {enc8.key}: the private key is encrypted (passphrase-protected)"),
    ("cert", "enc1", "--key {enc1.key}: the private key is encrypted (passphrase-protected)"),
    ("cert", "other_key", "--key {other.key} does not match --cert {tls.crt} (key values mismatch)"),
    ("cert", "der", "--key {key.der}: not a PEM file (no -----BEGIN ...----- line) (it looks like DER"),
    ("text", "key", "--cert {notes.txt}: not a PEM file"),
    ("csr", "key", "--cert {req.pem}: holds CERTIFICATE REQUEST, not a certificate"),
    ("cert", "csr", "--key {req.pem}: holds CERTIFICATE REQUEST, not a private key"),
    ("missing", "key", "--cert {missing.pem}: no such file"),
    ("cert", "missing", "--key {missing.pem}: no such file"),
]


def expected(template: str, tmp_path: Path) -> str:
    for name in (
        "tls.key",
        "tls.crt",
        "enc8.key",
        "enc1.key",
        "other.key",
        "key.der",
        "notes.txt",
        "req.pem",
        "missing.pem",
    ):
        template = template.replace("{" + name + "}", str(tmp_path / name))
    return template


@pytest.mark.parametrize(("cert", "key", "message"), CASES)
def test_each_mix_up_is_said(tmp_path: Path, ca: trustme.CA, cert: str, key: str, message: str) -> None:
    paths = files(tmp_path, ca) | {"missing": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError) as caught:
        check_pair(paths[cert], paths[key])
    assert expected(message, tmp_path) in str(caught.value)
    assert "PEM lib" not in str(caught.value)


def test_good_pairs_pass(tmp_path: Path, ca: trustme.CA) -> None:
    paths = files(tmp_path, ca)
    check_pair(paths["cert"], paths["key"])
    check_pair(paths["both"], paths["both"])  # a certificate and its key in one file, named twice
    check_pair(paths["cert"], paths["both"])
    check_tls_files(TLSOptions(pairs=((paths["cert"], paths["key"]),), client_ca=paths["ca"]))
    with pytest.raises(ConfigError, match=r"--client-ca .*holds a private key"):
        check_tls_files(TLSOptions(pairs=((paths["cert"], paths["key"]),), client_ca=paths["key"]))


def test_pem_labels() -> None:
    data = (
        b"junk\n-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n-----BEGIN EC PRIVATE KEY-----\n"
    )
    assert pem_labels(data) == [b"CERTIFICATE", b"EC PRIVATE KEY"]
    assert pem_labels(b"-----BEGIN CERTIFICATE----- trailing\n") == []


@pytest.mark.parametrize(("cert", "key", "message"), [CASES[0], CASES[1], CASES[3], CASES[5], CASES[6]])
def test_the_sidecar_says_it_on_one_line(
    tmp_path: Path, ca: trustme.CA, cert: str, key: str, message: str
) -> None:
    paths = files(tmp_path, ca)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distpat",
            "sidecar",
            "-t",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "http://127.0.0.1:1",
            "--cert",
            paths[cert],
            "--key",
            paths[key],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("DISTPAT_")},
        check=False,
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"distpat: error: {expected(message, tmp_path)}"), done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""
