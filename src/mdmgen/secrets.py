"""Secrets mdmgen handles itself: the pseudonym key, and the keyed pseudonyms made with it.

It also resolves the secrets a policy refers to (``{{ secret("NAME") }}``, ``{{ secret_file("PATH") }}``)
and fingerprints them with a keyed digest (see the second half). A pseudonym is

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
import json
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jinja2
from jinja2 import nodes

from . import runscope
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

    def row_digest(self, data: bytes) -> str:
        """A keyed digest of an inventory row (see ``inventory.load``): the compile state keeps one
        per device, and a plain hash of a row would let anyone confirm a guessed address."""
        return hmac.new(self._key, b"mdmgen inventory row\0" + data, hashlib.sha256).hexdigest()[:32]

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
        key = value.encode("utf-8", "surrogateescape")  # the bytes as set, even when they are not UTF-8
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


# --- secrets by reference: {{ secret("NAME") }} and {{ secret_file("PATH") }} ---------------------
#
# A policy names a secret; the value is read at compile time, once, before any device is rendered.
# The value goes only into the device files whose templates call for it. Everything else mdmgen
# writes or prints (manifest, inputs fingerprints, diff, logs, --json, errors) carries at most a
# *keyed fingerprint*: scrypt of the value (N=2**15, r=8, p=1: 32 MiB and about 0.1 s per guess on
# one core) salted with a fixed label and the secret's name. A plain SHA-256 prefix of a short or
# guessable token would be reversed by trying tokens; scrypt makes each guess cost memory and time,
# and the salt makes one guess useless against another secret's fingerprint. The salt is fixed (not
# random) on purpose: the same value must give the same fingerprint on every run and machine, so an
# unchanged token re-renders nothing and a rotated one re-renders every device that embeds it.

SECRET_FUNCTION = "secret"
SECRET_FILE_FUNCTION = "secret_file"
SECRET_FUNCTIONS = (SECRET_FUNCTION, SECRET_FILE_FUNCTION)
MAX_SECRET_FILE_BYTES = 64 << 10
"""A token is a few hundred bytes; 64 KiB is a certificate chain at most, and bounds the read."""
MIN_SECRET_CHARS = 8
"""Shorter values are refused: a credential that short is guessable, and redacting it from error
messages would also blank ordinary words that happen to contain it."""
FINGERPRINT_CHARS = 16
"""Hex digits of the keyed fingerprint kept in the manifest (64 bits); ``diff`` shows the first 8."""
_SCRYPT = {"n": 2**15, "r": 8, "p": 1, "maxmem": 64 << 20, "dklen": 32}
_FINGERPRINT_LABEL = b"mdmgen secret fingerprint v1"


@dataclass(frozen=True)
class SecretRef:
    """One secret a template refers to: an environment variable, or a file (its path as written,
    relative to the policy file that holds the template)."""

    kind: Literal["env", "file"]
    name: str

    @property
    def label(self) -> str:
        """``env:NAME`` or ``file:PATH``: how the manifest names it."""
        return f"{self.kind}:{self.name}"

    def describe(self) -> str:
        """How a person reads it: ``secret OTEL_TOKEN`` / ``secret_file tokens/otel.token``."""
        return f"{SECRET_FUNCTION if self.kind == 'env' else SECRET_FILE_FUNCTION} {self.name}"

    def call(self) -> str:
        function = SECRET_FUNCTION if self.kind == "env" else SECRET_FILE_FUNCTION
        return f"{function}({json.dumps(self.name)})"

    @classmethod
    def from_label(cls, label: str) -> SecretRef:
        kind, _, name = label.partition(":")
        if kind not in ("env", "file") or not name:
            raise ValueError(f"not a secret label: {label!r}")
        return cls(kind, name)  # type: ignore[arg-type]


class SecretReferenceError(ValueError):
    """A template calls secret()/secret_file() in a way that cannot be resolved before rendering."""


class SecretValueError(ValueError):
    """A referenced secret is missing or unusable; the message names it, never its value."""


_PARSER = jinja2.Environment()  # parsing only: nothing is rendered with it


def references(source: str) -> list[SecretRef]:
    """The secret()/secret_file() calls in one template string, in order, without repeats.

    Every argument must be one constant string, so what a compile needs is known before any
    device is rendered (and the collector side can write ``${env:NAME}`` for the same names).
    Raises SecretReferenceError for anything else (a variable as the name, a second argument, the
    function used without being called), and jinja2.TemplateSyntaxError for a broken template."""
    return references_in(_PARSER.parse(source))


def references_in(ast: nodes.Template) -> list[SecretRef]:
    """:func:`references` over an already parsed template."""
    found: list[SecretRef] = []
    calls: set[int] = set()
    for call in ast.find_all(nodes.Call):
        if not (isinstance(call.node, nodes.Name) and call.node.name in SECRET_FUNCTIONS):
            continue
        calls.add(id(call.node))
        function = call.node.name
        arg = call.args[0] if len(call.args) == 1 else None
        if (arg is None or call.kwargs or call.dyn_args or call.dyn_kwargs
                or not isinstance(arg, nodes.Const) or not isinstance(arg.value, str)):
            raise SecretReferenceError(f"{function}() takes one constant string, e.g. "
                                       f"{function}(\"OTEL_TOKEN\"), so the secret is known before rendering")
        ref = SecretRef("env" if function == SECRET_FUNCTION else "file", arg.value)
        problem = _bad_reference(ref)
        if problem:
            raise SecretReferenceError(f"{function}({json.dumps(ref.name)}): {problem}")
        if ref not in found:
            found.append(ref)
    for name in ast.find_all(nodes.Name):
        if name.name in SECRET_FUNCTIONS and id(name) not in calls:
            raise SecretReferenceError(f"{name.name} must be called directly, as {name.name}(\"...\")")
    return found


_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _bad_reference(ref: SecretRef) -> str | None:
    if ref.kind == "env":
        return None if _ENV_NAME_RE.match(ref.name) else "not an environment variable name"
    if not ref.name or "\x00" in ref.name:
        return "not a file path"
    return None


def resolve(ref: SecretRef, policy_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """The value of one secret; raises SecretValueError saying what is wrong, never the value.

    A file is read like every other input (a regular file, bounded), relative to the folder of the
    policy file, as UTF-8, with one trailing newline (LF or CRLF) stripped, since editors and
    ``echo`` add one and a token with a newline is a broken header."""
    if ref.kind == "env":
        env = os.environ if environ is None else environ
        value = env.get(ref.name)
        if value is None:
            raise SecretValueError(f"environment variable {ref.name} is not set")
        source = f"environment variable {ref.name}"
    else:
        path = policy_dir / ref.name
        try:
            data = read_input(path, MAX_SECRET_FILE_BYTES)
        except FileNotFoundError:
            raise SecretValueError(f"no such file: {path}") from None
        except InputFileError as exc:
            message = str(exc).replace(f"{MAX_SECRET_FILE_BYTES >> 20} MB", f"{MAX_SECRET_FILE_BYTES >> 10} KiB")
            raise SecretValueError(f"{path} {message}") from None
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretValueError(f"{path} is not UTF-8 text") from None
        value = value.removesuffix("\n").removesuffix("\r")
        source = f"the file {path}"
    if not value:
        raise SecretValueError(f"{source} is empty")
    if len(value) < MIN_SECRET_CHARS:
        raise SecretValueError(f"{source} holds {len(value)} characters; a secret must have at least "
                               f"{MIN_SECRET_CHARS}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise SecretValueError(f"{source} holds a control character (a newline inside the value?); "
                               "a header value cannot carry one")
    return value


def fingerprint(ref: SecretRef, value: str) -> str:
    """The keyed fingerprint of a secret value (see the comment above): hex, FINGERPRINT_CHARS long."""
    salt = _FINGERPRINT_LABEL + b"\x00" + ref.label.encode("utf-8")
    return hashlib.scrypt(value.encode("utf-8"), salt=salt, **_SCRYPT).hex()[:FINGERPRINT_CHARS]


_SHOWN_LABEL = b"mdmgen shown value fingerprint v1"


@runscope.memo  # values repeat across a fleet, and each scrypt takes tens of ms; kept for one run only
def shown_fingerprint(value: str) -> str:
    """How ``diff`` and ``preflight`` name a secret-bearing value they must not show: ``fp:`` and 8
    hex digits of the same slow, salted scrypt as :func:`fingerprint` (never a plain SHA-256, which
    anyone could reverse for a guessable token by hashing guesses). The same value always gets the
    same name, so an admin can tell which token a device has."""
    return "fp:" + hashlib.scrypt(value.encode("utf-8"), salt=_SHOWN_LABEL, **_SCRYPT).hex()[:8]


class Resolved:
    """The secret values one run (see ``runscope``) has resolved, so last-resort paths (a log line,
    an internal error's message) can redact them too. Values only, never written anywhere, and gone
    when the run ends: a second run in the same process neither redacts nor holds the first one's."""

    def __init__(self) -> None:
        self._values: dict[str, None] = {}  # a dict, not a set: the order they were resolved in

    def remember(self, value: str) -> None:
        self._values[value] = None

    def values(self) -> list[str]:
        return list(self._values)


def resolved() -> Resolved | None:
    """The run's :class:`Resolved`, for what must see it from outside the run's context (a log
    formatter, which publishing's worker threads call); None outside a run."""
    return runscope.slot(Resolved, Resolved)


def remember(value: str) -> None:
    """Add a resolved secret value to the run's :class:`Resolved`. Outside a run nothing is kept:
    the last-resort paths that need it are the CLI's, which always runs in one."""
    if (run := resolved()) is not None:
        run.remember(value)


def resolved_values() -> list[str]:
    """The secret values the run in progress has resolved (for :func:`messages.redact`); none between runs."""
    run = resolved()
    return run.values() if run is not None else []


# --- credentials written into a header by hand ---------------------------------------------------

_CREDENTIAL_HEADER = re.compile(
    r"(^|[-_])(authorization|auth|token|api-?key|apikey|key|secret|password|passwd|credentials?|dsn)([-_]|$)"
    r"|^x-honeycomb-team$", re.IGNORECASE)
_CREDENTIAL_SCHEME = re.compile(r"^\s*(bearer|basic|token|apikey|api-key|digest)\s+\S", re.IGNORECASE)
_EXPRESSION = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def credential_header(name: str, value: str) -> bool:
    """Whether one ``Name=value`` header pair carries a credential: by its name (Authorization,
    X-Api-Key, ...-Token, X-Honeycomb-Team) or by its value's scheme (``Bearer …``, ``Basic …``)."""
    return bool(_CREDENTIAL_HEADER.search(name.strip()) or _CREDENTIAL_SCHEME.match(value))


def literal_credentials(source: str) -> list[str]:
    """The header names in a headers value as written in the policy (``Name=value,...``, maybe a
    template) whose credential is not taken from secret()/secret_file(): a literal token, or one
    from a variable or ``--var`` (which sits in the audit repository, or shows in ``ps``)."""
    holes: list[str] = []

    def hole(match: re.Match[str]) -> str:
        holes.append(match.group(0))
        return f"\x00{len(holes) - 1}\x00"

    text = _EXPRESSION.sub(hole, source)
    bad = []
    for pair in text.split(","):
        name, sep, value = pair.partition("=")
        if not sep or "\x00" in name or not credential_header(name, value):
            continue
        used = [holes[int(index)] for index in re.findall(r"\x00(\d+)\x00", value)]
        if not any(_calls_secret(expression) for expression in used):
            bad.append(name.strip())
    return bad


def _calls_secret(expression: str) -> bool:
    try:
        return bool(references(expression))
    except (SecretReferenceError, jinja2.TemplateSyntaxError):
        return False
