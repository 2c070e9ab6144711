"""How mdmgen writes for people: long lists cut short, and secrets kept out of text that came
from elsewhere (a server's error page, an exception's message) before it is printed.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus, unquote

REDACTED = "[redacted]"
_SHORTEST_SECRET_PART = 6
"""A word of a secret this long is redacted on its own (the token of ``Bearer <token>``)."""


def first_of(items: Iterable[str], shown: int = 10) -> str:
    """``a, b, c (and 7 more)``: the first ``shown`` items, then how many were left out."""
    items = list(items)
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def secret_forms(secret: str) -> set[str]:
    """Every form in which ``secret`` may come back in a server's or a library's text.

    Raw; percent-decoded; percent-encoded as a path or as a form field would (``quote``,
    ``quote_plus``), with upper- or lower-case hex; JSON-escaped (``\\u00e9``, ``\\/``, ``\\"``);
    HTML-escaped; and base64, as in a Basic ``Authorization`` header (pass ``"id:secret"`` as a
    secret for the pair). A word of a secret at least :data:`_SHORTEST_SECRET_PART` long is a form of
    its own (the token of ``Bearer <token>``)."""
    if not secret:
        return set()
    forms = {secret, unquote(secret)}
    # surrogatepass: a variable holding bytes that are not UTF-8 is still hidden, not a crash
    for encoded in (quote(secret, safe="", errors="surrogatepass"), quote_plus(secret, errors="surrogatepass")):
        forms.add(encoded)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded))
    for escaped in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        forms.add(escaped)
        forms.add(escaped.replace("/", "\\/"))
    forms.add(html.escape(secret))
    forms.add(html.escape(secret, quote=False))
    forms.add(repr(secret)[1:-1])  # as Python shows it inside an exception's message
    raw = secret.encode("utf-8", "surrogatepass")
    forms.add(base64.b64encode(raw).decode())
    forms.add(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    words = {word for form in forms for word in form.split() if len(word) >= _SHORTEST_SECRET_PART}
    return forms | words


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every form of every secret (:func:`secret_forms`) replaced by ``[redacted]``,
    the longest forms first, ignoring case. Call it on the whole text, before any cut: a secret that straddles
    the cut would otherwise be printed in part."""
    return redactor(secrets)(text)


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """:func:`redact` for these secrets, with its pattern built once (for many messages)."""
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_forms(secret)
    shown = sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)
    if not shown:
        return lambda text: text
    # Ignoring case: a server that lower-cases what it echoes (or its percent-encoding) still
    # echoes the secret.
    pattern = re.compile("|".join(re.escape(form) for form in shown), flags=re.IGNORECASE)
    return lambda text: pattern.sub(REDACTED, text)


SIGN_KEY_PASSWORD_ENV = "MDMGEN_SIGN_KEY_PASSWORD"
SIGN_P12_PASSWORD_ENV = "MDMGEN_SIGN_P12_PASSWORD"
CREDENTIAL_VARIABLES = ("JAMF_CLIENT_SECRET", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_CLIENT_SECRET",
                        "MDMGEN_PSEUDONYM_KEY", SIGN_KEY_PASSWORD_ENV, SIGN_P12_PASSWORD_ENV,
                        "ANTHROPIC_ADMIN_KEY", "PROMETHEUS_BEARER_TOKEN", "PROMETHEUS_PASSWORD")
"""The environment variables that hold credentials mdmgen reads; a message of unknown origin (an
unexpected exception) is redacted of their values, since no caller could say what it holds."""


def environment_secrets() -> list[str]:
    return [value for name in CREDENTIAL_VARIABLES if (value := os.environ.get(name, ""))]


def shorten(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    """``text`` redacted, then cut to ``limit`` characters with ``...`` when it was longer: the one
    order that never shows part of a secret."""
    text = redact(text, secrets)
    return text[:limit] + ("..." if len(text) > limit else "")


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
    paths), so no caller has to remember. Printable ASCII, most lines, is returned as it is without
    building the pattern: its first use scans the Unicode table (a tenth of a second a process)."""
    if text.isascii() and text.isprintable():
        return text
    return _unprintable().sub(_escape, text)
