"""Secrets mdmgen handles itself: the pseudonym key, and the keyed pseudonyms made with it.

This module is the room for resolving secret references, keyed fingerprints and redaction; for
now it holds only what ``pseudonymise_email: true`` needs. A pseudonym is

    "u-" + hex(HMAC-SHA256(key, normalised email as UTF-8))[:32]

that is 128 bits of a keyed hash. It is keyed on purpose: a plain SHA-256 of an address is
reversed by hashing the company directory (or a guessable ``first.last@company``) and comparing,
so anyone holding the telemetry would hold the emails too. Without the key the pseudonym says
nothing; with it, the data team can compute a user's pseudonym to join or answer a request.

The key never comes from the policy or the inventory (both live in the audit repository), only
from ``MDMGEN_PSEUDONYM_KEY`` or the file named by ``MDMGEN_PSEUDONYM_KEY_FILE``. It is never
printed, logged or written: the output only carries ``key_id``, an HMAC of a fixed label under
the key, from which the key cannot be recovered, so that a rotation still changes every
device's inputs fingerprint.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from .inputfile import InputFileError, read_input

KEY_ENV = "MDMGEN_PSEUDONYM_KEY"
KEY_FILE_ENV = "MDMGEN_PSEUDONYM_KEY_FILE"
MIN_KEY_BYTES = 16
"""128 bits: a shorter key could be found by trying keys against one known email's pseudonym."""
MAX_KEY_FILE_BYTES = 1 << 20
"""A key is a few dozen bytes; a megabyte 'key file' is the wrong file (and is not read whole)."""
PREFIX = "u-"
HEX_CHARS = 32
"""128 bits of the HMAC: no collision in any fleet (birthday bound about 2**64 users)."""
PSEUDONYM_RE = re.compile(rf"^{re.escape(PREFIX)}[0-9a-f]{{{HEX_CHARS}}}$")
_KEY_ID_LABEL = b"mdmgen pseudonym key id v1"  # no '@': it can never be an email's pseudonym input


class PseudonymKeyError(ValueError):
    """The pseudonym key is missing or unusable; the message names the variable, never the key."""


def normalise_email(email: str) -> str:
    """The form that is hashed: Unicode NFC, then case-folded as a whole.

    The inventory already lower-cases the domain. The local part is case-folded too, although
    RFC 5321 allows mailboxes that differ only in case: no mail system a company uses treats them
    as different people, and HR exports do write ``Alice.Nguyen@`` one month and ``alice.nguyen@``
    the next. Folding keeps one person one pseudonym across exports, which is what the data team
    joins on.
    """
    return unicodedata.normalize("NFC", email.strip()).casefold()


class Pseudonymiser:
    """Keyed pseudonyms of emails under one key. Holds the key; never shows it (no ``repr``)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise PseudonymKeyError(f"the key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymiser(key=<hidden>)"

    def pseudonym(self, email: str) -> str:
        """``u-`` and the first 32 hex digits of HMAC-SHA256(key, normalised email)."""
        mac = hmac.new(self._key, normalise_email(email).encode("utf-8"), hashlib.sha256)
        return PREFIX + mac.hexdigest()[:HEX_CHARS]

    @property
    def key_id(self) -> str:
        """An HMAC of a fixed label under the key: changes with the key, reveals nothing of it.

        It goes into every device's inputs fingerprint, so a key rotation re-renders every device.
        """
        return hmac.new(self._key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()


def load_key(environ: Mapping[str, str] | None = None) -> Pseudonymiser:
    """The pseudonymiser for the key in the environment; raises PseudonymKeyError saying what to set.

    Exactly one of the two variables must be set. A key file must be a regular file (read like
    every other input, bounded); one trailing newline is stripped, since editors and ``echo``
    add it, and a key with a different newline would silently give different pseudonyms.
    """
    env = os.environ if environ is None else environ
    value, file = env.get(KEY_ENV), env.get(KEY_FILE_ENV)
    if value is not None and file is not None:
        raise PseudonymKeyError(f"both {KEY_ENV} and {KEY_FILE_ENV} are set; set only one")
    if value is not None:
        key = value.encode("utf-8")
        source = KEY_ENV
    elif file is not None:
        if not file:
            raise PseudonymKeyError(f"{KEY_FILE_ENV} is empty; name the key file")
        try:
            key = read_input(Path(file), MAX_KEY_FILE_BYTES)
        except FileNotFoundError:
            raise PseudonymKeyError(f"{KEY_FILE_ENV}: no such file: {file}") from None
        except InputFileError as exc:
            raise PseudonymKeyError(f"{KEY_FILE_ENV}: {file} {exc}") from None
        key = key.removesuffix(b"\n").removesuffix(b"\r")
        source = f"the file {file} ({KEY_FILE_ENV})"
    else:
        raise PseudonymKeyError(f"pseudonymise_email is on but no key is set: set {KEY_ENV} or {KEY_FILE_ENV} "
                        f"(at least {MIN_KEY_BYTES} bytes; keep it out of the policy and the inventory)")
    if not key:
        raise PseudonymKeyError(f"the key in {source} is empty")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"the key in {source} is {len(key)} bytes; it must be at least {MIN_KEY_BYTES}")
    return Pseudonymiser(key)


# --- placeholder until the secret-references work lands ------------------------------------------
# The secret-references work adds the template functions ``{{ secret("NAME") }}`` (an env variable)
# and ``{{ secret_file("PATH") }}`` and the real ``SecretRef``/``references`` below; the collector
# emitters (emit/collector) are written against exactly this interface. Keep theirs at merge.

from dataclasses import dataclass  # noqa: E402
from typing import Literal  # noqa: E402

import jinja2  # noqa: E402
from jinja2 import nodes  # noqa: E402

_SECRET_FUNCTIONS = {"secret": "env", "secret_file": "file"}


@dataclass(frozen=True, order=True)
class SecretRef:
    """A secret a template names: an env variable (``secret``) or a file (``secret_file``)."""

    kind: Literal["env", "file"]
    name: str


def references(source: str) -> list[SecretRef]:
    """The ``secret("NAME")`` and ``secret_file("PATH")`` calls in a template, in order, once each.

    Only calls with one constant string argument count (a computed name cannot be known before
    rendering). A string that is no valid template names no secret."""
    try:
        ast = jinja2.Environment().parse(source)
    except jinja2.TemplateSyntaxError:
        return []
    found: list[SecretRef] = []
    for call in ast.find_all(nodes.Call):
        kind = _SECRET_FUNCTIONS.get(call.node.name) if isinstance(call.node, nodes.Name) else None
        if kind and len(call.args) == 1 and isinstance(call.args[0], nodes.Const) \
                and isinstance(call.args[0].value, str):
            ref = SecretRef(kind, call.args[0].value)  # type: ignore[arg-type]
            if ref not in found:
                found.append(ref)
    return found
