"""W3C-baggage style ``key=value,key=value`` lists: ``OTEL_RESOURCE_ATTRIBUTES`` and headers.

The compiler writes these strings itself, from values that come straight out of an HR export, so
a team called ``R&D, Berlin`` or ``sales=emea`` must never be able to split or inject an attribute.
Encoding is deliberately conservative: every byte outside the RFC 3986 unreserved set is
percent-encoded, which is valid baggage and is decoded by the real client on every protocol
(see shared/reference/claude-code-managed-settings.md, sections 8.1 and 11).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

# RFC 7230 token: the only characters a key may have; keys are never percent-encoded.
TOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
# W3C baggage-octet: printable US-ASCII except space, '"', ',', ';' and '\'.
_BAGGAGE_VALUE_RE = re.compile(r"^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]+$")
_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class AttributeListError(ValueError):
    """An attribute list that does not parse; the message never includes a value."""


def encode_value(value: str) -> str:
    """Percent-encode one value (UTF-8), leaving only unreserved characters raw."""
    return quote(value, safe="")


def decode_value(raw: str) -> str:
    """Decode one percent-encoded value, strictly: bad escapes or bad UTF-8 are errors."""
    if not _BAGGAGE_VALUE_RE.match(raw):
        raise AttributeListError("value has characters that must be percent-encoded")
    if _PERCENT_RE.search(raw):
        raise AttributeListError("value has a '%' that is not followed by two hex digits")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise AttributeListError("value does not percent-decode to UTF-8") from exc


def encode(pairs: dict[str, str]) -> str:
    """Build ``k=v,k=v`` from checked keys and arbitrary values, in the given order."""
    for key in pairs:
        if not TOKEN_RE.match(key):
            raise AttributeListError(f"key {key!r} is not a token (letters, digits, !#$%&'*+-.^_`|~)")
    return ",".join(f"{key}={encode_value(value)}" for key, value in pairs.items())


def split_pairs(text: str) -> list[tuple[str, str]]:
    """Split ``k=v,k=v`` into raw (key, value) pairs; keys checked, values left as written."""
    pairs: list[tuple[str, str]] = []
    for index, member in enumerate(text.split(","), start=1):
        key, sep, value = member.partition("=")
        key = key.strip()
        if not sep:
            raise AttributeListError(f"entry {index} has no '='")
        if not TOKEN_RE.match(key):
            raise AttributeListError(f"entry {index} has a key that is not a token")
        pairs.append((key, value.strip()))
    return pairs


def decode(text: str) -> dict[str, str]:
    """Parse an attribute list back into decoded values; duplicate keys and empty values are errors."""
    result: dict[str, str] = {}
    for key, raw in split_pairs(text):
        if key in result:
            raise AttributeListError(f"key {key!r} appears more than once")
        if not raw:
            raise AttributeListError(f"key {key!r} has an empty value")
        try:
            result[key] = decode_value(raw)
        except AttributeListError as exc:
            raise AttributeListError(f"key {key!r}: {exc}") from None
    return result
