"""One macOS profile per team, and the proof that it gives every Mac exactly its compiled settings.

Pure functions over values, no I/O. Facts: ``shared/reference/intune-graph.md`` §2.5 (Intune's
token variables) and ``claude-code-managed-settings.md`` (how the client reads the settings).

**The team profile.** Intune pastes its token variables into a custom profile at delivery, raw and
case-sensitively (§2.5), so one profile serves a team when the only per-device values are ones
Intune knows. :func:`team_template` takes a representative Mac (the first serial) and puts
``{{mail}}`` where its inventory email is (raw or percent-encoded) and ``{{serialnumber}}`` where a
whole value is its serial. Nothing else is guessed: every other value is the representative's.

**The proof** (:func:`prove`) then checks every enrolled Mac, not the template's reasoning: it
substitutes what Intune will substitute for *that* Mac (its primary user's Entra ``mail``, its
serial) and compares, value by value, what the client would read with what the Mac's own
``managed-settings.json`` says. Attribute and header lists are compared percent-decoded, as the
client decodes them, so ``ada%40example.com`` compiled and ``ada@example.com`` pasted are equal,
while a ``%`` or ``,`` in an address (which the client would decode differently) is caught. Group
membership decides which objects a device gets: from each enrolled device's groups,
:func:`one_object` checks that exactly one mdmgen profile for ``com.anthropic.claudecode`` reaches a
Mac (and one script holding its serial a PC) once the publish is done, counting the objects it
writes and those it leaves in place; a device reached by two is refused, naming both.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ... import attributes
from ...envschema import SECRET_ENV

DOMAIN = "com.anthropic.claudecode"
MAIL = "{{mail}}"
SERIAL = "{{serialnumber}}"
LIST_VARIABLES = ("OTEL_RESOURCE_ATTRIBUTES", *SECRET_ENV)
"""env values the client reads as percent-encoded ``key=value`` lists."""
XML_SPECIAL = ("&", "<", ">")
"""[unverified] whether Intune escapes a substituted value for the profile's XML: refused, to be safe."""


@dataclass(frozen=True)
class Mac:
    """A Mac of the output folder: its compiled settings and its inventory email (None: unknown)."""

    serial: str
    settings: dict[str, Any]
    email: str | None


@dataclass(frozen=True)
class Seen:
    """What Intune and Entra know of one enrolled device (from its managed device record)."""

    serial: str
    user_id: str | None
    upn: str | None
    mail: str | None
    groups: frozenset[str]
    """Object ids of every group the primary user is in, transitively."""
    serial_number: str = ""
    """The serial as Intune spells it (matched ignoring case): what ``{{serialnumber}}`` becomes."""


@dataclass(frozen=True)
class Refusal:
    """Why one device cannot be served: the field, the compiled value and what Intune would give."""

    serial: str
    field: str
    compiled: str
    intune: str
    reason: str

    def __str__(self) -> str:
        if not self.field:  # a refusal of a whole group or team, said in its own words
            return f"{self.serial}: {self.reason}"
        return f"{self.serial}: {self.field}: compiled {self.compiled}, Intune would give {self.intune} ({self.reason})"


def shared_group(name: str, group_id: str, teams: list[str]) -> Refusal:
    """Two (or more) teams resolve to one Entra group: each of its members would get every one of
    those teams' objects, conflicting profiles for one domain."""
    listed = ", ".join(repr(t) for t in teams[:-1]) + f" and {teams[-1]!r}"
    return Refusal(f"group {name!r} ({group_id})", "", "", "",
                   f"teams {listed} all resolve to this Entra group, so each of its members' Macs would get "
                   f"{len(teams)} profiles for {DOMAIN}; map each team to a group of its own under 'intune: groups:' "
                   "in the policy")


@dataclass(frozen=True)
class Reaching:
    """One of mdmgen's objects as it will stand once the publish is done: written (to its team's
    group) or left in place as Intune holds it (``left``: no team's any more, or a duplicate)."""

    name: str
    groups: frozenset[str]
    everyone: bool = False
    """Assigned to a target other than a plain group (all devices, all users, a filter): it may
    reach any device, so it counts for every one."""
    serials: frozenset[str] | None = None
    """A script: the serials its table holds (None: unreadable, so any). A profile: None."""
    left: bool = False

    def reaches(self, record: Seen) -> bool:
        return ((self.everyone or bool(self.groups & record.groups))
                and (self.serials is None or record.serial in self.serials))


def one_object(record: Seen, found: Iterable[Reaching], *, windows: bool = False) -> list[Refusal]:
    """A Mac must be reached by exactly one mdmgen profile for the domain (a PC by one script whose
    table holds its serial); none is what :func:`membership` explains, two or more are refused here."""
    hits = sorted((o for o in found if o.reaches(record)), key=lambda o: o.name)
    if len(hits) < 2:
        return []
    names = ", ".join(repr(o.name) for o in hits[:-1]) + f" and {hits[-1].name!r}"
    left = [repr(o.name) for o in hits if o.left]
    why = (f"its primary user {record.upn!r} is in the groups they are assigned to" if record.user_id
           else "they are assigned to every device")
    why += (", so each would write its managed-settings.json, in no set order" if windows
            else ", and a Mac given two profiles for one domain gets conflicting settings")
    if left:
        why += f"; {', '.join(left)} no team needs: --prune deletes it, or remove it in the portal"
    what = "one script holding its file" if windows else f"one profile for {DOMAIN}"
    return [Refusal(record.serial, "Windows scripts" if windows else f"{DOMAIN} profiles", what,
                    f"{len(hits)}: {names}", why)]


# --- the template --------------------------------------------------------------------------------


def team_template(representative: Mac) -> dict[str, Any]:
    """The representative's settings with Intune's tokens where its email and serial are."""
    return _map_strings(representative.settings, lambda path, text: _tokenise(path, text, representative))


def uses(template: Any, token: str) -> bool:
    """Whether ``token`` occurs anywhere in the template."""
    found = False

    def look(_path: tuple[str, ...], text: str) -> str:
        nonlocal found
        found = found or token in text
        return text

    _map_strings(template, look)
    return found


def substitute(template: dict[str, Any], *, mail: str, serial: str) -> dict[str, Any]:
    """What a Mac receives: every token pasted raw, as Intune does (§2.5)."""
    return _map_strings(template, lambda _path, text: text.replace(MAIL, mail).replace(SERIAL, serial))


def _tokenise(path: tuple[str, ...], text: str, mac: Mac) -> str:
    if _is_list(path):
        try:
            pairs = attributes.split_pairs(text)
        except attributes.AttributeListError:
            return text
        out = []
        for key, raw in pairs:
            try:
                value = attributes.decode_value(raw)
            except attributes.AttributeListError:
                out.append(f"{key}={raw}")
                continue
            if value == mac.serial:
                raw = SERIAL
            elif mac.email:
                raw = raw.replace(attributes.encode_value(mac.email), MAIL)
            out.append(f"{key}={raw}")
        return ",".join(out)
    if text == mac.serial:
        return SERIAL
    return text.replace(mac.email, MAIL) if mac.email else text


def _is_list(path: tuple[str, ...]) -> bool:
    return len(path) == 2 and path[0] == "env" and path[1] in LIST_VARIABLES


def _map_strings(value: Any, fn: Any, path: tuple[str, ...] = ()) -> Any:
    if isinstance(value, dict):
        return {key: _map_strings(item, fn, (*path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, fn, (*path, str(i))) for i, item in enumerate(value)]
    if isinstance(value, str):
        return fn(path, value)
    return copy.copy(value)


# --- what the client reads ------------------------------------------------------------------------


def client_view(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as the client understands them: attribute and header lists percent-decoded (a list
    that does not decode stays a string, marked, so it can never equal a decoded one)."""
    view = copy.deepcopy(settings)
    env = view.get("env")
    if isinstance(env, dict):
        for name in LIST_VARIABLES:
            if isinstance(env.get(name), str):
                try:
                    env[name] = {"decoded": attributes.decode(env[name])}
                except attributes.AttributeListError as exc:
                    env[name] = {"does not decode": str(exc)}
    return view


def differences(compiled: Any, delivered: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(field, compiled, delivered)`` for every value that differs, by dotted path."""
    if isinstance(compiled, dict) and isinstance(delivered, dict) and not _is_decoded(compiled, delivered):
        out = []
        for key in sorted(set(compiled) | set(delivered), key=str):
            if key not in compiled or key not in delivered:
                out.append((".".join((*path, str(key))), compiled.get(key, "<absent>"), delivered.get(key, "<absent>")))
            else:
                out += differences(compiled[key], delivered[key], (*path, str(key)))
        return out
    if type(compiled) is type(delivered) and compiled == delivered:
        return []
    return [(".".join(path), compiled, delivered)]


def _is_decoded(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return set(a) | set(b) <= {"decoded", "does not decode"}


# --- the proof ------------------------------------------------------------------------------------


def prove(team: str, macs: Iterable[Mac], seen: Mapping[str, list[Seen]], *, group_id: str,
          template: dict[str, Any], pseudonymised: bool, secret_fields: Iterable[str] = ()) -> list[Refusal]:
    """Every reason an enrolled Mac of ``team`` would not get exactly its compiled settings from its
    team's profile (whether another profile reaches it too is :func:`one_object`'s to say).

    ``seen`` holds each enrolled serial's managed device record(s) (a serial can be enrolled more
    than once, §4.1: each record must pass).
    """
    refusals: list[Refusal] = []
    secret = set(secret_fields) | set(SECRET_ENV)
    needs_mail = uses(template, MAIL)
    mail_in_list = any(_is_list(("env", name)) and MAIL in str(value)
                       for name, value in (template.get("env") or {}).items())
    macs = sorted(macs, key=lambda m: m.serial)
    # Pseudonyms have no Intune token: a team whose Macs differ cannot share one profile at all.
    pseudonyms_differ = pseudonymised and len({repr(sorted(m.settings.items())) for m in macs}) > 1
    for mac in macs:
        for record in seen.get(mac.serial, []):
            refusals += membership(team, record, group_id=group_id)
            if pseudonyms_differ:
                refusals.append(Refusal(mac.serial, "user_email", "its own pseudonym", "the team's one profile",
                                        "the email is pseudonymised (pseudonymise_email): Intune has no token for a "
                                        "keyed pseudonym, so the team's Macs cannot share one profile"))
                continue
            mail = record.mail or ""
            if needs_mail:
                problem = _mail_problem(mac, record, mail_in_list)
                if problem is not None:
                    refusals.append(problem)
                    continue
            delivered = substitute(template, mail=mail, serial=record.serial_number or mac.serial)
            for field, compiled, got in differences(client_view(mac.settings), client_view(delivered)):
                hidden = field.split(".")[-1] in secret and field.startswith("env.")
                why = ("the email is pseudonymised: Intune has no token for a keyed pseudonym" if pseudonymised
                       else "this value differs per device and Intune has no token for it")
                refusals.append(Refusal(mac.serial, field, "<secret>" if hidden else _shown(compiled),
                                        "<a different secret>" if hidden else _shown(got), why))
    return refusals


def membership(team: str, record: Seen, *, group_id: str) -> list[Refusal]:
    """A device gets its team's objects only if its primary user is in its team's group."""
    if record.user_id is None:
        return [Refusal(record.serial, "primary user", f"team {team!r}", "no objects",
                        "the device has no primary user in Intune, so no group assignment reaches it")]
    if group_id not in record.groups:
        return [Refusal(record.serial, "group membership", f"team {team!r}", "no objects",
                        f"its primary user {record.upn!r} is not in the team's group {group_id}")]
    return []


def _mail_problem(mac: Mac, record: Seen, mail_in_list: bool) -> Refusal | None:
    mail = record.mail
    if mac.email is None:
        return Refusal(mac.serial, "mail", "<pseudonym>", repr(mail or ""),
                       "the email is pseudonymised (pseudonymise_email): Intune's {{mail}} would deliver the raw "
                       "address, not the pseudonym")
    if not mail:
        return Refusal(mac.serial, "mail", repr(mac.email), "''",
                       f"its primary user {record.upn!r} has no mail in Entra ID, so {{{{mail}}}} would be empty")
    if mail != mac.email:
        how = "differs only in case" if mail.casefold() == mac.email.casefold() else "differs"
        return Refusal(mac.serial, "mail", repr(mac.email), repr(mail),
                       f"the Entra mail of {record.upn!r} {how} from the inventory email")
    if any(ch in mail for ch in XML_SPECIAL):
        return Refusal(mac.serial, "mail", repr(mac.email), repr(mail),
                       "the address holds a character of XML markup (& < >), which Intune pastes into the profile")
    if mail_in_list and not _decodes_as_itself(mail):
        return Refusal(mac.serial, "mail", repr(attributes.encode_value(mac.email)), repr(mail),
                       "substituted raw into an attribute list, the address would decode differently "
                       "(a '%', ',', ';', space or quote in it)")
    return None


def _decodes_as_itself(value: str) -> bool:
    try:
        return attributes.decode_value(value) == value
    except attributes.AttributeListError:
        return False


def _shown(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"decoded"}:
        return repr(value["decoded"])
    if isinstance(value, dict) and set(value) == {"does not decode"}:
        return f"a list that does not decode ({value['does not decode']})"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
