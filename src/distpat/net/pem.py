"""The sidecar's certificate and key files, checked before the TLS layer loads them (at start, on
``-t`` and at every reload: :class:`distpat.net.tls.CertificateStore` calls :func:`check_pair`).

OpenSSL reports most mix-ups as ``[SSL] PEM lib`` (or, for an encrypted key,
asks for a passphrase on the terminal). Here each file is read, the labels
of its PEM blocks are looked at (RFC 7468), and each mistake gets a message
that says what the file holds instead and names it: a ``--key`` file that
holds a certificate, a ``--cert`` that holds a key, an encrypted key, a file
that is not PEM. Then the pair is loaded with :mod:`ssl`, with a passphrase
callback that refuses (nothing is ever prompted for), so a key that does not
match its certificate is said so too.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distpat.errors import ConfigError

if TYPE_CHECKING:
    from distpat.net.tls import TLSOptions

__all__ = ["check_certificate_file", "check_pair", "check_tls_files", "no_passphrase", "pem_labels"]

_BEGIN = re.compile(rb"^-----BEGIN ([A-Z0-9 ]+)-----\s*$", re.MULTILINE)
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY"}
_CERT_LABELS = {b"CERTIFICATE", b"TRUSTED CERTIFICATE", b"X509 CERTIFICATE"}


def pem_labels(data: bytes) -> list[bytes]:
    """The labels of the PEM blocks in ``data`` (``CERTIFICATE``, ``PRIVATE KEY``, ...), in order."""
    return _BEGIN.findall(data)


def _encrypted(data: bytes, labels: Sequence[bytes]) -> bool:
    # PKCS#8's EncryptedPrivateKeyInfo, or OpenSSL's traditional "Proc-Type: 4,ENCRYPTED" header.
    return b"ENCRYPTED PRIVATE KEY" in labels or b"Proc-Type: 4,ENCRYPTED" in data


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None


def _describe(labels: Sequence[bytes]) -> str:
    return ", ".join(sorted({label.decode() for label in labels}))


def _not_pem(path: str, what: str, data: bytes) -> ConfigError:
    hint = (
        " (it looks like DER: convert it with openssl x509 -inform der -in FILE -out FILE.pem)"
        if data[:1] == b"\x30"
        else ""
    )
    return ConfigError(f"{what} {path}: not a PEM file (no -----BEGIN ...----- line){hint}")


def check_certificate_file(path: str, what: str = "--cert") -> None:
    """``path`` holds at least one PEM certificate; otherwise a message saying what it holds."""
    data = _read(path, what)
    labels = pem_labels(data)
    if not labels:
        raise _not_pem(path, what, data)
    if not _CERT_LABELS.intersection(labels):
        if _KEY_LABELS.intersection(labels) or _encrypted(data, labels):
            raise ConfigError(
                f"{what} {path}: holds a private key, not a certificate (are --cert and --key swapped?)"
            )
        raise ConfigError(f"{what} {path}: holds {_describe(labels)}, not a certificate")


def check_key_file(path: str) -> None:
    """``path`` holds an unencrypted PEM private key; otherwise a message saying what it holds."""
    data = _read(path, "--key")
    labels = pem_labels(data)
    if not labels:
        raise _not_pem(path, "--key", data)
    if _encrypted(data, labels):
        raise ConfigError(
            f"--key {path}: the private key is encrypted (passphrase-protected), and distpat asks for no "
            f"passphrase: decrypt it with openssl pkey -in {path} -out PLAIN.key"
        )
    if not _KEY_LABELS.intersection(labels):
        if _CERT_LABELS.intersection(labels):
            raise ConfigError(
                f"--key {path}: holds a certificate, not a private key (are --cert and --key swapped?)"
            )
        raise ConfigError(f"--key {path}: holds {_describe(labels)}, not a private key")


def no_passphrase() -> bytes:
    """A passphrase callback for ssl's load_cert_chain that refuses: nothing is ever prompted for."""
    raise ConfigError("an encrypted key")  # never reached once check_key_file passed; never prompts


def check_pair(cert: str, key: str) -> None:
    """The files are what they should be, and the key is the certificate's."""
    check_certificate_file(cert)
    check_key_file(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"--key {key} does not match --cert {cert} (key values mismatch): give the key the "
                f"certificate was issued for"
            ) from None
        raise ConfigError(
            f"--cert {cert} with --key {key}: OpenSSL cannot load them: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--cert {cert} with --key {key}: cannot read: {exc.strerror or exc}") from None


def check_tls_files(tls: TLSOptions) -> None:
    """Every pair and the client CA file of ``tls``, in order; the first problem raises ConfigError."""
    for cert, key in tls.pairs:
        check_pair(cert, key)
    if tls.client_ca is not None:
        check_certificate_file(tls.client_ca, "--client-ca")
