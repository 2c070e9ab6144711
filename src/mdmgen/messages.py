"""How mdmgen writes for people: long lists cut short, and secrets kept out of text that came
from elsewhere (a server's error page, an exception's message) before it is printed.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote

REDACTED = "[redacted]"
_SHORTEST_SECRET_PART = 6
"""A word of a secret this long is redacted on its own (the token of ``Bearer <token>``)."""


def first_of(items: Iterable[str], shown: int = 10) -> str:
    """``a, b, c (and 7 more)``: the first ``shown`` items, then how many were left out."""
    items = list(items)
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``[redacted]``.

    A server or library may echo a secret in another form than it was sent, so each secret is
    also looked for percent-decoded, percent-encoded (both as a path and as a form field would
    encode it) and word by word; the longest forms are replaced first."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        for form in (secret, unquote(secret), quote(secret, safe=""), quote_plus(secret)):
            forms.add(form)
            forms.update(word for word in form.split() if len(word) >= _SHORTEST_SECRET_PART)
    for form in sorted((f for f in forms if len(f) >= 4), key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


def _unprintable_class() -> str:
    """Every character a terminal or a log reader may act on or not show: the C0 and C1 controls
    (newline, tab, ESC and the CSI of escape sequences included), DEL, the line and paragraph
    separators, the invisible format characters (Unicode category Cf: bidi overrides, zero-width
    spaces, the BOM), lone surrogates and the noncharacters."""
    ranges = ["\\x00-\\x1f", "\\x7f-\\x9f", "\\u2028\\u2029", "\\ud800-\\udfff", "\\ufdd0-\\ufdef"]
    ranges += [re.escape(chr(c)) for c in range(0xA0, sys.maxunicode + 1)
               if (c & 0xFFFE) == 0xFFFE or (not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) == "Cf")]
    return "[" + "".join(ranges) + "]"


@functools.cache
def _unprintable() -> re.Pattern[str]:
    return re.compile(_unprintable_class())  # built on first use: it scans the Unicode table once
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` safe to print as (part of) one line: every character of :func:`_unprintable_class`
    shown as a visible escape (``\\n``, ``\\x1b``, ``\\u202e``).

    mdmgen promises one line per problem; a field or value from the inventory, the policy or a
    server's error page may hold a newline that forges a second "problem", an escape sequence that
    rewrites the terminal, or a right-to-left override that makes a name read as another. Every
    line mdmgen prints about its inputs goes through here (``Problem.__str__`` and the CLI's error
    paths), so no caller has to remember."""
    return _unprintable().sub(_escape, text)
