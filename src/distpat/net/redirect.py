"""A plain-HTTP listener that sends every request to the HTTPS one (``--redirect-http``).

GET and HEAD get ``301 Moved Permanently``; other methods ``308 Permanent
Redirect``, which keeps the method and body. The Location is
``https://HOST[:PORT]TARGET``: the Host the client asked for (its port
replaced by the HTTPS listener's, left out when that is 443) and the request
target. Each answer closes its connection; nothing is forwarded anywhere.
"""

from __future__ import annotations

import asyncio
import re

import httptools

from distpat.core.http import error_response, response_head

__all__ = ["RedirectProtocol", "redirect_location"]

# One DNS label, or a bracketed IPv6 literal. No nested repetition: checked label by label, a long
# Host costs linear time (a single pattern over the whole name backtracked exponentially).
_LABEL = re.compile(rb"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IPV6 = re.compile(rb"\[[0-9A-Fa-f:.]{2,45}\]")


def _is_host(name: bytes) -> bool:
    if name.startswith(b"["):
        return _IPV6.fullmatch(name) is not None
    if len(name) > 254:
        return False
    labels = name[:-1].split(b".") if name.endswith(b".") else name.split(b".")
    return all(_LABEL.fullmatch(label) for label in labels)


def redirect_location(host: bytes, target: bytes, https_port: int) -> bytes | None:
    """The https URL for ``target`` asked of ``host`` (a Host field value); None if ``host`` is not a host."""
    host = host.strip(b" \t")
    if host.startswith(b"["):
        name = host[: host.find(b"]") + 1] if b"]" in host else host
    else:
        name = host.rpartition(b":")[0] if b":" in host else host
    if not name or not _is_host(name):
        return None
    if not target.startswith(b"/"):
        # absolute-form (http://h/p) keeps its path; asterisk-form and others go to the root
        m = re.match(rb"[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*(/.*)?\Z", target)
        target = (m.group(1) or b"/") if m else b"/"
    port = b"" if https_port == 443 else b":%d" % https_port
    return b"https://" + name + port + target


class RedirectProtocol(asyncio.Protocol):
    """One plain connection: read a request head, answer with a redirect, close."""

    def __init__(self, https_port: int, header_timeout: float, max_header_bytes: int) -> None:
        self.https_port = https_port
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.host: bytes | None = None
        self.seen = 0
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(self.header_timeout, self._timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _timeout(self) -> None:
        self._answer(error_response(408, "request header timeout", close=True))

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.seen += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._redirect()
        except httptools.HttpParserError as exc:
            if not self.done:
                self._answer(error_response(400, f"malformed request: {exc}", close=True))
        if not self.done and self.seen > self.max_header_bytes:
            self._answer(error_response(431, "request header fields too large", close=True))

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self.host = value if self.host is None else b""  # two Host fields: no redirect
        if self.seen > self.max_header_bytes:
            raise ValueError("header too large")  # httptools turns it into HttpParserError

    def on_headers_complete(self) -> None:
        self._redirect()

    def _redirect(self) -> None:
        if self.done:
            return
        location = None if not self.host else redirect_location(self.host, self.url, self.https_port)
        if location is None:
            self._answer(error_response(400, "a redirect to HTTPS needs a valid Host header", close=True))
            return
        method = self.parser.get_method()
        status = 301 if method in (b"GET", b"HEAD") else 308
        body = b"" if method == b"HEAD" else b"see " + location + b"\n"
        head = response_head(
            status,
            [
                (b"Location", location),
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"%d" % (len(location) + 5)),
                (b"Connection", b"close"),
            ],
        )
        self._answer(head + body)

    def _answer(self, data: bytes) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()
