"""Header handling for upstream calls: the lines sent to libcurl, the
answer's header block parsed, and the end-to-end headers passed on."""

import re

from tornado.httputil import HTTPHeaders

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP stack sets itself.
HOP_BY_HOP = frozenset(
    "connection keep-alive proxy-authenticate proxy-authorization proxy-connection te trailer "
    "transfer-encoding upgrade host content-length expect".split()
)


def encode_headers(headers):
    """Header lines for libcurl's HTTPHEADER, from HTTPHeaders, a dict or
    (name, value) pairs. Empty `Expect:` and `Pragma:` lines keep libcurl from
    adding its own (a 100-continue wait on larger bodies; no-cache). A CR or LF
    in a line is refused, not sent."""
    if isinstance(headers, HTTPHeaders):
        items = headers.get_all()
    elif isinstance(headers, dict):
        items = headers.items()
    else:
        items = headers  # (name, value) pairs
    lines = []
    seen = set()
    for name, value in items:
        seen.add(name.lower())
        lines.append(f"{name}: {value}".encode("latin1"))
    if "expect" not in seen:
        lines.append(b"Expect:")
    if "pragma" not in seen:
        lines.append(b"Pragma:")
    joined = b"".join(lines)
    if b"\r" in joined or b"\n" in joined:
        raise ValueError("illegal characters in a header (CR or LF)")
    return lines


# A header block whose every line is a valid field (RFC 9110: a token, a
# colon, then visible characters, spaces and tabs), checked in one match
# rather than with HTTPHeaders.add's two per line. Characters are latin-1.
_FIELD_LINES = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r?\n)*")


def parse_header_lines(lines):
    """HTTPHeaders from raw header lines (bytes, each ending in CRLF); a line
    that is not a valid field is dropped."""
    headers = HTTPHeaders()
    block = b"".join(lines).decode("latin1")
    fields = block.split("\n")[:-1]
    if _FIELD_LINES.fullmatch(block):
        seen = set()
        for line in fields:
            name, _, value = line.partition(":")
            value = value.strip(" \t\r")
            key = name.lower()
            if key in seen:
                headers.add(name, value)
            else:
                seen.add(key)
                headers[name] = value  # checked above: no second check
        return headers
    for line in fields:
        name, colon, value = line.partition(":")
        if colon:
            try:
                headers.add(name, value.strip(" \t\r"))
            except Exception:
                pass
    return headers


def end_to_end_headers(headers, drop=()):
    """The (name, value) pairs of `headers` less hop-by-hop ones, those the
    Connection header names, and any in `drop` (lower-case names)."""
    named = set()
    for value in headers.get_list("Connection"):
        named.update(v.strip().lower() for v in value.split(","))
    pairs = []
    for name, value in headers.get_all():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in drop:
            continue
        pairs.append((name, value))
    return pairs
