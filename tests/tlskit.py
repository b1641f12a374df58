"""Helpers for the TLS sidecar tests: certificates, a `distpat sidecar` process, real TLS clients.

* :class:`Issuer` -- a trustme CA writing server and client pairs into a directory; every PEM file is
  padded to a fixed size, so a file can be rewritten in place without changing size or mtime.
* :func:`running_sidecar` -- ``distpat sidecar ARGS`` as a subprocess (stderr to a file, readable while
  it runs), waited for until its ports accept, stopped (SIGTERM, then SIGKILL) however the block is left.
* :func:`openssl_client`, :func:`curl` -- the real command-line clients, run with stdin closed (or fed
  given bytes) and a timeout, off the event loop (the recording backend lives on it).
* :func:`served_serial` -- a fresh Python handshake (never a resumed one), returning the serial number
  of the certificate the server sent.

Only 127.0.0.1 is a target, every wait has a deadline. A missing binary fails the test with the
Debian package to install; it never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.nutcracker import port_accepts

__all__ = [
    "HOST",
    "Issuer",
    "Pair",
    "Sidecar",
    "curl",
    "openssl_client",
    "overwrite_in_place",
    "pem_serial",
    "replace_atomically",
    "require_binary",
    "running_sidecar",
    "served_serial",
]

HOST = "127.0.0.1"
#: Every PEM file written here is padded to this many bytes (comment lines before the PEM block).
PEM_FILE_SIZE = 4096
#: Seconds a command-line client may take.
CLIENT_TIMEOUT = 20.0
#: Seconds the sidecar may take to accept on its ports.
START_TIMEOUT = 15.0


def require_binary(name: str, package: str) -> str:
    """Path of executable ``name``; fails the test (naming the Debian package) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH; these tests need it: run `apt-get install -y {package}`", pytrace=False
        )
    return path


def _padded(pem: bytes) -> bytes:
    """``pem`` after comment lines, PEM_FILE_SIZE bytes in all (PEM readers skip text before BEGIN)."""
    room = PEM_FILE_SIZE - len(pem)
    if room < 2:
        raise ValueError(f"a PEM of {len(pem)} bytes does not fit in {PEM_FILE_SIZE}")
    filler = b"# padding\n" * ((room - 1) // 10)
    return filler + b"#" * (room - len(filler) - 1) + b"\n" + pem


def pem_serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


@dataclass(frozen=True, slots=True)
class Pair:
    """A certificate and its key as written (padded) to disk, and the certificate's serial number."""

    cert: Path
    key: Path
    serial: int
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)


class Issuer:
    """A trustme CA whose certificates are written under ``directory``."""

    def __init__(self, directory: Path, organization: str = "distpat test CA") -> None:
        self.directory = directory
        self.ca = trustme.CA(organization_name=organization)
        self.ca_path = directory / f"{organization.replace(' ', '-')}.pem"
        self.ca_path.write_bytes(self.ca.cert_pem.bytes())

    def issue(
        self,
        *names: str,
        common_name: str | None = None,
        organization_name: str | None = None,
        organization_unit_name: str | None = None,
    ) -> tuple[bytes, bytes, int]:
        """(leaf certificate PEM, key PEM, serial) for ``names`` (DNS names, IPs or e-mail addresses)."""
        leaf = self.ca.issue_cert(
            *names,
            common_name=common_name,
            organization_name=organization_name,
            organization_unit_name=organization_unit_name,
        )
        cert_pem = leaf.cert_chain_pems[0].bytes()
        return cert_pem, leaf.private_key_pem.bytes(), pem_serial(cert_pem)

    def pair(
        self,
        stem: str,
        *names: str,
        common_name: str | None = None,
        organization_name: str | None = None,
        organization_unit_name: str | None = None,
    ) -> Pair:
        """A new certificate for ``names`` written to ``stem.pem`` and ``stem-key.pem``."""
        cert_pem, key_pem, serial = self.issue(
            *names,
            common_name=common_name,
            organization_name=organization_name,
            organization_unit_name=organization_unit_name,
        )
        cert, key = self.directory / f"{stem}.pem", self.directory / f"{stem}-key.pem"
        cert.write_bytes(_padded(cert_pem))
        key.write_bytes(_padded(key_pem))
        return Pair(cert, key, serial, cert_pem, key_pem)


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` next to ``path`` and rename it over ``path`` (a new inode, as deploy tools do)."""
    staging = path.with_name(path.name + ".new")
    staging.write_bytes(_padded(data))
    os.replace(staging, path)


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Rewrite ``path`` keeping its inode, size and modification time: no stat() can tell it changed."""
    before = path.stat()
    padded = _padded(data)
    assert len(padded) == before.st_size
    with open(path, "r+b") as f:
        f.write(padded)
        f.truncate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


# --------------------------------------------------------------------------
# The sidecar process


@dataclass(eq=False)
class Sidecar:
    """A running distpat process (the sidecar here; tests/rediskit.py's redis-shard too) and its log."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    name: str = "sidecar"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def wait_for_log(self, text: str, *, after: int = 0, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the log past offset ``after``; return the log from there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tail = self.log()[after:]
            if text in tail:
                return tail
            if loop.time() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s; log since then:\n{tail}")
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_distpat(
    subcommand: str, workdir: Path, port: int, argv: Sequence[str], *, also: Sequence[int] = ()
) -> AsyncIterator[Sidecar]:
    """``python -m distpat SUBCOMMAND ARGV`` until the block is left (SIGTERM, then SIGKILL).

    The block is entered once ``port`` and every port in ``also`` accept. DISTPAT_* variables of the
    environment are not passed on. The log is ``workdir/SUBCOMMAND-PORT.log``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{subcommand}-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTPAT_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "distpat", subcommand, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    run = Sidecar(process, port, log_path, name=subcommand)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        waiting = [port, *also]
        while waiting:
            if process.poll() is not None:
                raise AssertionError(f"distpat {subcommand} exited with {process.returncode}:\n{run.log()}")
            if loop.time() > deadline:
                raise AssertionError(
                    f"distpat {subcommand} did not accept on {waiting} in time:\n{run.log()}"
                )
            if await port_accepts(waiting[0]):
                waiting.pop(0)
            else:
                await asyncio.sleep(0.05)
        yield run
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)


@contextlib.asynccontextmanager
async def running_sidecar(
    workdir: Path, port: int, *args: str, also: Sequence[int] = ()
) -> AsyncIterator[Sidecar]:
    """``distpat sidecar --listen 127.0.0.1:PORT ARGS`` until the block is left.

    The block is entered once ``port`` and every port in ``also`` accept.
    """
    async with running_distpat(
        "sidecar", workdir, port, ["--listen", f"{HOST}:{port}", *args], also=also
    ) as run:
        yield run


# --------------------------------------------------------------------------
# Clients


async def _run(argv: Sequence[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    done = await asyncio.to_thread(
        subprocess.run,
        list(argv),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    # Decoded by hand: text=True would also turn CRLF into LF, and HTTP heads need their CRLF.
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


async def openssl_client(
    port: int, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """``openssl s_client -connect 127.0.0.1:PORT ARGS``.

    With ``stdin`` None, stdin is closed: the handshake is made and the client quits. Otherwise
    ``stdin`` is sent once the handshake is done (add ``-ign_eof`` to read the answer to the end).
    """
    binary = require_binary("openssl", "openssl")
    return await _run([binary, "s_client", "-connect", f"{HOST}:{port}", *args], stdin)


async def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """``curl -sS --max-time 15 ARGS``."""
    binary = require_binary("curl", "curl")
    return await _run([binary, "-sS", "--max-time", "15", *args])


def _served_serial(port: int, ca: Path, server_name: str | None) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))  # a new context: no session to resume
    if server_name is None:
        ctx.check_hostname = False  # no SNI at all; the chain is still verified
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


async def served_serial(port: int, ca: Path, server_name: str | None) -> int:
    """The serial of the certificate a fresh handshake gets (``server_name`` None: without SNI)."""
    return await asyncio.to_thread(_served_serial, port, ca, server_name)
