"""A forged client identity through `distpat sidecar`: header names with `_` (issue 10, "Hostile input").

A WSGI or CGI service reads ``X_Client_Cert_Subject`` and ``X-Client-Cert_Subject`` as the
``HTTP_X_CLIENT_CERT_SUBJECT`` the sidecar sets from a verified certificate, so the sidecar drops
request fields whose names contain ``_``. curl sends them over real TLS; the backend records what
arrived.
"""

from __future__ import annotations

from pathlib import Path

from tests.httpkit import Backend
from tests.nutcracker import free_ports
from tests.tlskit import Issuer, curl, running_sidecar

FORGED = (
    "X_Client_Cert_Subject: CN=admin",
    "X-Client-Cert_Subject: CN=admin",
    "x_client_cert_subject: CN=admin",
    "X-CLIENT_CERT-SUBJECT: CN=admin",
)


def cgi_name(name: bytes) -> bytes:
    return b"HTTP_" + name.upper().replace(b"-", b"_")


async def test_no_forged_identity_reaches_a_wsgi_style_service(tmp_path: Path) -> None:
    issuer = Issuer(tmp_path)
    server = issuer.pair("server", "localhost")
    client = issuer.pair("client", "client@example.test", common_name="client one")
    ca = str(issuer.ca_path)
    (port,) = free_ports(1)
    async with Backend() as backend:
        args = ("--cert", str(server.cert), "--key", str(server.key), "--upstream", backend.url)
        async with running_sidecar(tmp_path, port, *args, "--client-ca", ca, "--shutdown-timeout", "2"):
            for forged in FORGED:
                got = await curl(
                    "-H", forged, "--cacert", ca, "--cert", str(client.cert), "--key", str(client.key),
                    f"https://localhost:{port}/who",
                )  # fmt: skip
                assert got.returncode == 0, got.stderr
                assert got.stdout == "GET /who 0"
        assert len(backend.requests) == len(FORGED)
        for request in backend.requests:
            # What a CGI/WSGI gateway would make of every field that arrived: one subject, the real one.
            environ = [(cgi_name(name), value) for name, value in request.headers]
            [subject] = [v for k, v in environ if k == b"HTTP_X_CLIENT_CERT_SUBJECT"]
            assert subject.startswith(b"CN=client one,")  # the certificate's, not "CN=admin"
            assert not any(b"_" in name for name, _ in request.headers)
