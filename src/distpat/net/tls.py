"""TLS for the sidecar: server contexts, SNI, hot reload of certificates.

One *front* :class:`ssl.SSLContext` (the first pair's, as first loaded) is
given to the listener. Its SNI callback
hands every handshake the context of the certificate that matches the name
the client asked for (:func:`distpat.core.certs.choose_certificate`), taken
from the store's current set. A reload builds a complete new set and swaps it
in with one assignment, so a handshake sees the old set or the new, never a
mix, and connections already open keep the context they were made with.
Session tickets are sealed with the front context's keys, which never
change, so resumption works across certificates and across reloads.

The settings are those of a modern server profile: TLS 1.2 and 1.3 only,
forward-secret AEAD suites for 1.2 (TLS 1.3 has no others), no compression,
no renegotiation, ALPN ``http/1.1`` in HTTP mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distpat.core.certs import choose_certificate
from distpat.errors import ConfigError
from distpat.net.pem import check_certificate_file, check_pair, no_passphrase
from distpat.net.ratelog import RateLog

__all__ = [
    "TLS12_CIPHERS",
    "CertificateStore",
    "TLSOptions",
    "certificate_info",
    "certificate_not_after",
    "failure_reason",
]

log = logging.getLogger("distpat.tls")
REFUSALS_LOG = RateLog(log)
"""Refused handshakes: one line a second per reason (a port scan is a refusal a connection)."""

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""OpenSSL cipher string for TLS 1.2: ECDHE (forward secrecy) with AES-GCM or ChaCha20-Poly1305."""


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """What the sidecar's TLS listener serves."""

    pairs: tuple[tuple[str, str], ...]
    """(certificate chain file, key file), in order; the first is served when no name matches."""
    client_ca: str | None = None
    """CA file that client certificates must chain to; None for no client certificates."""
    min_version: str = "1.2"
    alpn: tuple[str, ...] = ("http/1.1",)
    reload_interval: float = 1.0
    """Seconds between checks of the files for changes."""


_FAILURE_REASONS = {
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "CERTIFICATE_VERIFY_FAILED": "bad_client_certificate",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SHARED_GROUPS": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
    "WRONG_VERSION_NUMBER": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
}
"""OpenSSL's reason codes for a refused handshake -> the ``reason`` label of
``distpat_tls_handshake_failures_total``; any other reason is ``other``."""


def failure_reason(exc: ssl.SSLError) -> str:
    """The metric's reason for a handshake that failed with ``exc``."""
    return _FAILURE_REASONS.get(str(exc.reason), "other")


class _ServerContext(ssl.SSLContext):
    """A server context that knows where to count its refused handshakes."""

    handshake_failures: dict[str, int] | None = None


class DirectSSLObject(ssl.SSLObject):
    """An :class:`ssl.SSLObject` whose ``read``, ``write`` and ``pending`` are the C object's own methods.

    ``SSLObject``'s are Python wrappers that only pass their arguments on; the
    event loop's TLS layer calls them several times per request, and each
    call is a Python frame. Bound to the instance, they cost a C call. The
    behaviour is the same: the wrappers add nothing but the frame.

    ``do_handshake`` stays a Python method, to count a refused handshake by its
    reason: neither asyncio's nor uvloop's TLS layer reports one (an
    :class:`ssl.SSLError` is an OSError, which both log only in debug mode),
    and the application protocol never sees the connection.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        self: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        inner = self._sslobj  # type: ignore[attr-defined]
        self.read, self.write, self.pending = inner.read, inner.write, inner.pending  # type: ignore[method-assign]
        return self

    def do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            failures = getattr(self.context, "handshake_failures", None)
            if failures is not None:
                reason = failure_reason(exc)
                failures[reason] = failures.get(reason, 0) + 1
                message = exc.reason or exc
                REFUSALS_LOG.log(logging.INFO, reason, "TLS handshake refused (%s): %s", reason, message)
            raise


@dataclass(frozen=True, slots=True)
class _Served:
    context: ssl.SSLContext
    names: tuple[str, ...]
    serial: str
    path: str = ""
    not_after: float = 0.0
    """The certificate's notAfter, as a Unix time."""


def _decode(path: str) -> dict[str, Any]:
    try:
        # The standard library decodes a certificate file only through this
        # helper (ssl's own tests use it); the context loads the same file.
        decoded: dict[str, Any] = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{path}: not a PEM certificate: {exc}") from None
    return decoded


def certificate_not_after(path: str) -> float:
    """The notAfter of a PEM certificate, as a Unix time (ConfigError as :func:`certificate_info`)."""
    text = _decode(path).get("notAfter")
    if not text:
        raise ConfigError(f"{path}: the certificate has no notAfter")
    return float(ssl.cert_time_to_seconds(text))


def certificate_info(path: str) -> tuple[tuple[str, ...], str]:
    """The DNS names (subjectAltName, else the common name) and the serial number of a PEM certificate.

    Raises:
        ConfigError: the file cannot be read or holds no certificate.
    """
    decoded = _decode(path)
    names = tuple(value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS")
    ips = tuple(value for kind, value in decoded.get("subjectAltName", ()) if kind == "IP Address")
    if not names and not ips:
        names = tuple(
            value for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName"
        )
    return names + ips, str(decoded.get("serialNumber", "?"))


def _signature(paths: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((-1, -1, -1))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class CertificateStore:
    """The certificates in service, the listener's front context, and their reloading."""

    def __init__(self, options: TLSOptions) -> None:
        if not options.pairs:
            raise ConfigError("TLS needs at least one --cert and --key")
        if options.min_version not in ("1.2", "1.3"):
            raise ConfigError(f"--tls-min must be 1.2 or 1.3, not {options.min_version!r}")
        self.options = options
        self.paths = [p for pair in options.pairs for p in pair]
        if options.client_ca is not None:
            self.paths.append(options.client_ca)
        self._signature = _signature(self.paths)
        self.handshake_failures: dict[str, int] = {}
        """Refused handshakes by reason (see :func:`failure_reason`), counted by every context."""
        self.served = self._load()  # raises ConfigError: a bad pair at startup stops the process
        self.generation = 1
        # The first pair's context is also the front one: a handshake it serves needs no switch
        # (which copies the certificate data into the connection), until a reload replaces it.
        self.context = self.served[0].context
        self.context.sni_callback = self._on_sni
        self._task: asyncio.Task[None] | None = None

    # -- contexts -----------------------------------------------------------------

    def _context(self, cert: str, key: str) -> ssl.SSLContext:
        options = self.options
        ctx = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.sslobject_class = DirectSSLObject
        ctx.handshake_failures = self.handshake_failures
        ctx.minimum_version = (
            ssl.TLSVersion.TLSv1_3 if options.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        )
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        if options.alpn:
            ctx.set_alpn_protocols(list(options.alpn))
        # What each file holds, said plainly (not OpenSSL's "PEM lib"), and the pair loaded with a
        # passphrase callback that refuses: an encrypted key swapped in never prompts on a terminal.
        check_pair(cert, key)
        try:
            ctx.load_cert_chain(cert, key, password=no_passphrase)
        except (OSError, ssl.SSLError) as exc:  # replaced between the check and the load
            raise ConfigError(f"certificate {cert} with key {key}: {exc}") from None
        if options.client_ca is not None:
            check_certificate_file(options.client_ca, "--client-ca")
            try:
                ctx.load_verify_locations(cafile=options.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"client CA {options.client_ca}: {exc}") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _load(self) -> tuple[_Served, ...]:
        served = []
        for cert, key in self.options.pairs:
            ctx = self._context(cert, key)
            names, serial = certificate_info(cert)
            served.append(_Served(ctx, names, serial, cert, certificate_not_after(cert)))
        return tuple(served)

    def _on_sni(self, ssl_object: ssl.SSLObject, server_name: str | None, _front: ssl.SSLContext) -> None:
        served = self.served  # one read: the set in service at this handshake
        chosen = served[choose_certificate(server_name, [s.names for s in served])].context
        if ssl_object.context is not chosen:
            ssl_object.context = chosen
        return

    def expiries(self) -> list[tuple[str, str, float]]:
        """(file, names, notAfter) of each certificate in service (the expiry gauge's source)."""
        return [(s.path, "/".join(s.names), s.not_after) for s in self.served]

    # -- reloading --------------------------------------------------------------------

    def reload(self, reason: str = "files changed") -> bool:
        """Load every pair again; swap them in if all load, else keep the old ones and log why."""
        self._signature = _signature(self.paths)
        try:
            served = self._load()
        except ConfigError as exc:
            log.error("TLS reload (%s) refused, the certificates in service stay: %s", reason, exc)
            return False
        self.served = served
        self.generation += 1
        log.info(
            "TLS certificates reloaded (%s): %s",
            reason,
            ", ".join(f"{'/'.join(s.names) or '?'} serial {s.serial}" for s in served),
        )
        return True

    def check(self) -> bool:
        """Reload if any file changed since the last look; True when a reload happened."""
        if _signature(self.paths) == self._signature:
            return False
        return self.reload()

    def start(self) -> None:
        """Check the files every ``reload_interval`` seconds, from a task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_interval)
            try:
                self.check()
            except Exception:  # never let the watcher die: the next look tries again
                log.exception("TLS certificate check failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
