"""Identity keys: one person, one key, whichever source names them.

A key is the normalised email (``secrets.normalise_email``: NFC, case-folded), so ``Alice@Example.com``
on the Admin API is the inventory's ``alice@example.com``. When the output folder was compiled with
``pseudonymise_email``, the key is the keyed pseudonym of that email, made by the compile's own
function with the same key (``MDMGEN_PSEUDONYM_KEY``): the sources' addresses are pseudonymised as
they are read, so no address reaches the report, its files or its messages.
"""

from __future__ import annotations

from .. import secrets
from .models import AdoptionUsageError


class Identities:
    """Makes identity keys; holds the pseudonymiser (never shown) when the fleet is pseudonymised."""

    __slots__ = ("_pseudonymiser",)

    def __init__(self, pseudonymiser: secrets.Pseudonymiser | None = None):
        self._pseudonymiser = pseudonymiser

    @classmethod
    def for_fleet(cls, pseudonymised: bool) -> Identities:
        """Plain keys, or pseudonyms with the key from the environment (exit 2 when it is missing)."""
        if not pseudonymised:
            return cls()
        try:
            return cls(secrets.load_key())
        except secrets.PseudonymKeyError as exc:
            raise AdoptionUsageError(f"the output folder was compiled with pseudonymise_email, so the sources' "
                                     f"emails are pseudonymised with the compile's key to be joined: {exc}") from None

    @property
    def pseudonymised(self) -> bool:
        return self._pseudonymiser is not None

    def of_email(self, email: str) -> str:
        """The key of an email address a source reported."""
        if self._pseudonymiser is not None:
            return self._pseudonymiser.pseudonym(email)
        return secrets.normalise_email(email)

    def of_sent(self, value: str) -> str:
        """The key of what a device sends as its person: a pseudonym as it is, else an email."""
        value = value.strip()
        if self._pseudonymiser is not None and secrets.PSEUDONYM_RE.match(value):
            return value
        return self.of_email(value)
