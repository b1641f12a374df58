"""Certificate names (core/certs.py), the redirect target, and the sidecar's header rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.certs import choose_certificate, format_subject, name_matches
from distpat.core.forward import forward_request, forward_response
from distpat.net.redirect import redirect_location


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("example.test", "example.test", True),
        ("Example.TEST", "example.test.", True),
        ("example.test", "www.example.test", False),
        ("*.example.test", "www.example.test", True),
        ("*.example.test", "WWW.Example.Test", True),
        ("*.example.test", "example.test", False),
        ("*.example.test", "a.b.example.test", False),
        ("*.example.test", ".example.test", False),
        ("*.test", "example.test", False),  # no wildcard over a two-label name
        ("w*.example.test", "www.example.test", False),  # partial wildcards are not honoured
        ("www.*.test", "www.example.test", False),
        ("", "example.test", False),
        ("example.test", "", False),
    ],
)
def test_name_matching(pattern: str, name: str, expected: bool) -> None:
    assert name_matches(pattern, name) is expected


def test_choose_certificate_prefers_exact_then_wildcard_then_the_first() -> None:
    certs = [("default.test",), ("*.b.test", "x.test"), ("a.b.test",)]
    assert choose_certificate("a.b.test", certs) == 2  # exact beats the earlier wildcard
    assert choose_certificate("c.b.test", certs) == 1
    assert choose_certificate("X.TEST", certs) == 1
    assert choose_certificate("nothing.test", certs) == 0
    assert choose_certificate(None, certs) == 0
    assert choose_certificate("", certs) == 0


@given(name=st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True))
def test_choice_is_always_a_valid_index(name: str) -> None:
    certs = [("*.example.test",), (name,), ("other.test",)]
    i = choose_certificate(name, certs)
    assert 0 <= i < len(certs)
    assert name_matches(certs[i][0], name) or i == 0


def test_subject_is_written_as_rfc_4514() -> None:
    subject = (
        (("countryName", "GB"),),
        (("organizationName", "Example, Ltd"),),
        (("commonName", "client one"), ("userId", "42")),
    )
    assert format_subject(subject) == r"CN=client one+UID=42,O=Example\, Ltd,C=GB"


@given(st.text(max_size=40))
def test_subject_is_always_printable_ascii(value: str) -> None:
    out = format_subject(((("commonName", value),),))
    assert all(0x20 <= ord(c) < 0x7F for c in out)


def test_non_ascii_is_escaped_as_nginx_does() -> None:
    assert format_subject(((("commonName", "Zoë"),),)) == r"CN=Zo\C3\AB"


@pytest.mark.parametrize(
    ("host", "target", "port", "expected"),
    [
        (b"example.test", b"/a?b=c", 443, b"https://example.test/a?b=c"),
        (b"example.test:8080", b"/", 8443, b"https://example.test:8443/"),
        (b"[::1]:80", b"/x", 443, b"https://[::1]/x"),
        (b"127.0.0.1", b"http://127.0.0.1/p?q", 443, b"https://127.0.0.1/p?q"),
        (b"example.test", b"*", 443, b"https://example.test/"),
        (b"bad host", b"/", 443, None),
        (b"evil.test/x", b"/", 443, None),
        (b"", b"/", 443, None),
        (b"a" * 5000 + b"!", b"/", 443, None),  # checked label by label: no exponential backtracking
        (b"a-.example.test", b"/", 443, None),
        (b"example.test.", b"/", 443, b"https://example.test./"),
    ],
)
def test_redirect_location(host: bytes, target: bytes, port: int, expected: bytes | None) -> None:
    assert redirect_location(host, target, port) == expected


def test_a_dropped_request_field_is_left_out_and_the_extra_one_added() -> None:
    out = forward_request(
        b"GET",
        b"/",
        [(b"Host", b"h"), (b"x-client-cert-subject", b"CN=forged"), (b"X-Client-Cert-Subject", b"x")],
        http10=False,
        client_addr="1.2.3.4",
        scheme="https",
        via=b"1.1 distpat",
        drop=frozenset({b"x-client-cert-subject"}),
        extra=[(b"X-Client-Cert-Subject", b"CN=real")],
    )
    assert out is not None
    head = out[2]
    assert b"forged" not in head
    assert head.count(b"X-Client-Cert-Subject") == 1
    assert b"X-Client-Cert-Subject: CN=real\r\n" in head
    assert b"X-Forwarded-Proto: https\r\n" in head


def test_response_fields_replace_the_upstreams() -> None:
    out = forward_response(
        b"GET",
        200,
        [(b"Content-Length", b"2"), (b"Strict-Transport-Security", b"max-age=1")],
        via=b"1.1 distpat",
        http10=False,
        keep_alive=True,
        drop=frozenset({b"strict-transport-security"}),
        extra=[(b"Strict-Transport-Security", b"max-age=600")],
    )
    assert out is not None
    assert out[1] == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 distpat\r\n"
        b"Strict-Transport-Security: max-age=600\r\n\r\n"
    )
