"""Certificate names: which certificate answers an SNI name, and how a subject is written.

Pure functions over the decoded forms Python's :mod:`ssl` produces
(``getpeercert()``'s nested tuples); the TLS layer (:mod:`distpat.net.tls`)
feeds them.

Name matching follows RFC 6125 section 6.4 as browsers apply it: names compare
case-insensitively, a wildcard is allowed only as the whole left-most label
(``*.example.com``), matches exactly one label (not ``example.com``, not
``a.b.example.com``), and never sits on a public-suffix-like two-label name
(``*.com`` matches nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["choose_certificate", "format_subject", "name_matches", "normalize_server_name"]

DistinguishedName = Sequence[Sequence[tuple[str, str]]]
"""A subject as ``ssl.SSLSocket.getpeercert()["subject"]`` gives it: RDNs, each a sequence of pairs."""

# OpenSSL's long names (what getpeercert() gives) -> the short names RFC 4514 and nginx use.
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "emailAddress",
    "serialNumber": "serialNumber",
}


def normalize_server_name(name: str) -> str:
    """A DNS name as compared: lower case, without a trailing dot."""
    return name.rstrip(".").lower()


def name_matches(pattern: str, name: str) -> bool:
    """Whether certificate name ``pattern`` (maybe ``*.example.com``) covers host ``name``."""
    pattern, name = normalize_server_name(pattern), normalize_server_name(name)
    if not pattern or not name:
        return False
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == name
    suffix = pattern[1:]  # ".example.com"
    if "*" in suffix or suffix.count(".") < 2:
        return False
    head, dot, rest = name.partition(".")
    return bool(head) and bool(dot) and "." + rest == suffix


def choose_certificate(server_name: str | None, names: Sequence[Sequence[str]]) -> int:
    """The index of the certificate to serve for ``server_name``.

    ``names`` lists each certificate's DNS names (its subjectAltNames; the
    common name only when it has none). An exact name beats a wildcard;
    among equals the first listed wins; with no SNI, or no match, it is the
    first certificate (index 0), as nginx serves its default server's.
    """
    if not server_name:
        return 0
    wildcard = -1
    for i, candidates in enumerate(names):
        for pattern in candidates:
            if name_matches(pattern, server_name):
                if not pattern.startswith("*."):
                    return i
                if wildcard < 0:
                    wildcard = i
    return max(wildcard, 0)


def _escape(value: str) -> str:
    """RFC 4514 section 2.4 escaping of an attribute value."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        elif ch == "=":
            out.append("\\=")
        elif ord(ch) < 0x20 or ord(ch) >= 0x7F:
            out.append("".join(f"\\{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def format_subject(subject: DistinguishedName) -> str:
    """A subject as an RFC 4514 string, the form nginx's ``$ssl_client_s_dn`` takes.

    The RDNs are written last first (``CN=client,O=Example,C=GB`` for a
    subject issued as C, O, CN), multi-valued RDNs joined with ``+``. Control
    characters and non-ASCII ones are written as ``\\XX`` escapes of their
    UTF-8 bytes (``é`` as ``\\C3\\A9``, as nginx does), so the result is
    printable ASCII, safe in a header field.
    """
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_SHORT_NAMES.get(key, key)}={_escape(value)}" for key, value in rdn))
    return ",".join(rdns)
