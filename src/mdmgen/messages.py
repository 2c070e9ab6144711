"""How mdmgen writes for people: long lists cut short, and secrets kept out of text that came
from elsewhere (a server's error page, an exception's message) before it is printed.
"""

from __future__ import annotations

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
