"""The values ``mdmgen adoption`` works on: the enrolled fleet, each source's activity, the report.

Plain pydantic models, so the join (:mod:`.join`) is a pure function of them and the tests can build
them directly. Every person is an *identity key*: a normalised email (``secrets.normalise_email``:
NFC, case-folded), or, when the output folder was compiled with ``pseudonymise_email``, the keyed
pseudonym of that email. A report never holds anything else about a person.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from ..endpoints import check_url
from ..errors import MdmgenException
from ..exitcodes import ExitCode
from ..publish.base import RemoteError


class AdoptionUsageError(MdmgenException, ValueError):
    """A flag or an environment variable that cannot be used (exit 2): one line, naming it."""

    exit_code = ExitCode.USAGE


class SourceError(RemoteError):
    """A source refused or failed (exit 7): one line, never holding a credential."""


class FileWriteError(MdmgenException, OSError):
    """``--csv`` or ``--chart`` could not be written (exit 4): one line naming the file."""

    exit_code = ExitCode.OUTPUT_FAILED


class Device(BaseModel):
    """One compiled device: its serial, its team (the manifest's display spelling), and the person it
    sends (an identity key), or None when its settings send no ``user_email`` attribute."""

    model_config = ConfigDict(frozen=True)

    serial: str
    team: str
    person: str | None


class Fleet(BaseModel):
    """What the output folder says: the devices, whether they send pseudonyms, and the Prometheus label
    that carries the team (the generated rules' label; ``team`` without a collector section)."""

    model_config = ConfigDict(frozen=True)

    devices: tuple[Device, ...]
    pseudonymised: bool = False
    team_label: str = "team"

    def keyed(self, identity: Callable[[str], str]) -> Fleet:
        """The same fleet with each device's person turned into an identity key by ``identity``."""
        return self.model_copy(update={"devices": tuple(
            d.model_copy(update={"person": identity(d.person) if d.person else None}) for d in self.devices)})


class Activity(BaseModel):
    """What one source saw over the window, by identity key.

    ``people``: the days each person had at least one session. ``sessions``: their sessions in the
    window (None where the source does not count them). ``teams``: the team a person's telemetry
    said (Prometheus only). ``api_keys``: sessions per API key name (Admin API only: no person).
    """

    source: str
    cannot_see: str
    """One line: what this source cannot see (its coverage holes)."""
    people: dict[str, list[date]] = Field(default_factory=dict)
    sessions: dict[str, int] = Field(default_factory=dict)
    teams: dict[str, str] = Field(default_factory=dict)
    api_keys: dict[str, int] = Field(default_factory=dict)


class NotReporting(BaseModel):
    people: list[str]
    devices: list[str]


class TeamRow(BaseModel):
    team: str
    enrolled: int
    active: int
    ratio: float | None
    not_reporting: NotReporting
    daily_active: dict[str, int]
    """Per UTC day of the window (``YYYY-MM-DD``), the team's enrolled people active that day."""


class Outsider(BaseModel):
    """A person active in the window who is not in the output folder (contractor, leaver, alias)."""

    user: str
    days_active: int
    sessions: int | None = None
    team: str | None = None
    sources: list[str]


class ApiKeyUsage(BaseModel):
    api_key_name: str
    sessions: int


class SourceLine(BaseModel):
    name: str
    url: str
    cannot_see: str


class Report(BaseModel):
    """``mdmgen adoption --json`` (with ``exit_code`` added by the command line)."""

    window: dict[str, str | int]
    pseudonymised: bool
    sources: list[SourceLine]
    teams: list[TeamRow]
    active_not_enrolled: list[Outsider]
    api_key_usage: list[ApiKeyUsage]
    unidentified_devices: list[str]
    """Devices whose settings send no ``user_email`` attribute: no person to count them for."""
    notes: list[str]


def source_url(url: str, option: str, *, credentials_go: str, shape: str) -> str:
    """A source's base URL (a path prefix kept) without a trailing slash, for one of the report's
    ``--*-url`` options; AdoptionUsageError (exit 2) when credentials could leak through it (plain
    http off loopback, a user:password in it) or it has a query or fragment. ``shape`` is the form
    the message asks for, e.g. ``https://HOST[:PORT]``."""
    url = url.strip()
    try:
        check_url(url, credentials_go=credentials_go)
    except ValueError as exc:
        raise AdoptionUsageError(f"{option}: {exc}") from None
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise AdoptionUsageError(f"{option}: must not have a query or fragment; give {shape}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
