"""Publish to Microsoft Intune: per team, one macOS profile and the Windows script(s), each assigned
to the team's Entra group, after proving every enrolled device gets exactly its compiled settings.

Planning reads, in this order, and writes nothing:

1. ``intune/teams.json`` of the output folder (the policy's team -> group mapping and the Macs'
   inventory emails; the compile writes it when the policy has an ``intune:`` section);
2. each team's group (a mapped id, or the group whose displayName is the mapped name or the team
   name, ignoring case); a team with no group is refused by name;
3. every managed device (one paged list, §4.1: cheaper than a filter per serial for a fleet), and
   for each enrolled device of the output its primary user's ``mail``, UPN and transitive groups
   (``$batch``, §5.4);
4. the proof (:mod:`.proof`); any device that cannot be served refuses the whole publish (exit 1);
5. mdmgen's objects in Intune, each read by id with its assignments, so a change is decided on the
   decoded content itself (a description could lie after IntuneCD #264's silent PATCH).

Applying creates or PATCHes only what changed, sends the complete assignment set only when it
changed, and reads every written object back: a PATCH that kept the old payload stops the run.
"""

from __future__ import annotations

import json
import logging
import plistlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ...emit import mobileconfig, registry
from ...messages import first_of
from ...models import Platform
from ...output import CheckedOutput as LocalOutput
from ...output import device_path
from ...progress import NO_PROGRESS, Progress
from ..base import (
    Action,
    Desired,
    LocalOutputError,
    Note,
    Plan,
    PlanItem,
    PublishError,
    Remote,
    RemoteError,
    Unservable,
    build_plan,
    run_bounded,
)
from . import objects, proof
from .graph import MAX_BATCH, GraphClient, GraphError
from .objects import CONFIGS, MACOS_TYPE, NAME_PREFIX, SCRIPTS, RemoteObject, WantedObject
from .scripts import build_team_scripts, read_table

log = logging.getLogger("mdmgen.publish.intune")

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DEVICE_FIELDS = "id,serialNumber,userId,userPrincipalName,operatingSystem"
WORKERS = 4


@dataclass(frozen=True)
class IntunePlan(Plan):
    """A plan whose objects serve whole teams: the deletion guard counts the devices each object
    serves (from its description), so ``--max-delete`` keeps meaning a share of the devices.
    ``proof`` is one line per team saying what was proven, printed by ``--dry-run`` before the plan."""

    proof: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return [*self.proof, *super().lines()]

    def _served(self, *actions: Action) -> set[str]:
        return {f"{item.key}#{n}" for item in self.of(*actions)
                for n in range(item.remote.devices if isinstance(item.remote, RemoteObject) else 0)}

    def published_devices(self) -> set[str]:
        return self._served(Action.UPDATE, Action.UNCHANGED, Action.DELETE, Action.STALE)

    def deleted_devices(self) -> set[str]:
        return self._served(Action.DELETE)

    def stale_devices(self) -> set[str]:
        return self._served(Action.STALE)


@dataclass(frozen=True)
class Fleet:
    """What the output folder says, per team."""

    macs: dict[str, list[proof.Mac]]
    mac_profiles: dict[str, bytes]
    """The representative Mac's compiled profile, per team (for the profile's names)."""
    pcs: dict[str, dict[str, bytes]]
    groups: dict[str, str]
    pseudonymised: bool
    secret_env: tuple[str, ...]

    @property
    def teams(self) -> list[str]:
        return sorted(set(self.macs) | set(self.pcs))


class IntunePublisher:
    """Plans and applies a publish to one tenant's Intune through :class:`GraphClient`."""

    noun = "object"

    def __init__(self, client: GraphClient, *, workers: int = WORKERS) -> None:
        self.client = client
        self.workers = workers
        self.proof_lines: list[str] = []

    # -- plan --

    def plan(self, local: LocalOutput, *, prune: bool, progress: Progress = NO_PROGRESS) -> Plan:
        fleet = read_fleet(local)
        groups, refusals = self._groups(fleet)
        serials = {m.serial for team in fleet.macs.values() for m in team} | {
            s for files in fleet.pcs.values() for s in files}
        seen = self._seen(serials, progress)
        notes: list[Note] = []
        unenrolled = sorted(serials - set(seen))
        if unenrolled:
            notes.append(Note("unenrolled", f"{len(unenrolled)} device(s) are not enrolled in Intune (no managed "
                              f"device has the serial): {first_of(unenrolled)}; they get nothing until they are.",
                              tuple(unenrolled)))
        twice = sorted(serial for serial, records in seen.items() if len(records) > 1)
        if twice:
            notes.append(Note("duplicate_serials", f"{len(twice)} serial(s) match several managed devices, and "
                              f"each record was proven: {first_of(twice)}.", tuple(twice)))
        wanted: list[WantedObject] = []
        proven_macs = proven_pcs = 0
        lines: list[str] = []
        for team in fleet.teams:
            group = groups.get(team)
            if group is None:
                continue
            before = (proven_macs, proven_pcs, len(wanted))
            # Only another team's macOS profile can reach a Mac; a PC runs every script assigned to it,
            # but only the one whose table holds its serial writes anything, so only its own team matters.
            others = {t: g for t, g in groups.items() if t != team and t in fleet.macs}
            macs = fleet.macs.get(team, [])
            if macs:
                template = proof.team_template(macs[0])
                found = proof.prove(team, macs, seen, group_id=group, other_groups=others, template=template,
                                    pseudonymised=fleet.pseudonymised, secret_fields=fleet.secret_env)
                refusals += found
                proven_macs += sum(1 for m in macs if m.serial in seen)
                payload = team_profile(fleet.mac_profiles[team], macs[0].serial, team, template)
                wanted.append(WantedObject("macos", objects.macos_name(team), team,
                                           objects.macos_fields(team, len(macs), _payload_name(payload)),
                                           payload, (group,), len(macs), tuple(m.serial for m in macs)))
            pcs = fleet.pcs.get(team, {})
            for serial in sorted(pcs):
                for record in seen.get(serial, []):
                    refusals += proof.membership(team, record, group_id=group, other_groups={})
                proven_pcs += 1 if serial in seen else 0
            if pcs:
                wanted += self._scripts(team, pcs, group)
            lines.append(f"proof   {team}: group {group}; {proven_macs - before[0]} of {len(macs)} Mac(s) and "
                         f"{proven_pcs - before[1]} of {len(pcs)} PC(s) enrolled, each proven to get exactly its "
                         f"compiled settings from {len(wanted) - before[2]} object(s)")
        if refusals:
            raise Unservable(refusal_message(refusals))
        notes.append(Note("proof", f"Proof: {proven_macs} enrolled Mac(s) and {proven_pcs} enrolled PC(s) of "
                          f"{len(fleet.teams)} team(s) each get exactly their compiled settings, from "
                          f"{len(wanted)} Intune object(s).", ()))
        remote = self._remote(progress)
        desired = [Desired(w.name, w.sha256, len(w.content), None, None, detail=w) for w in wanted]
        plan = build_plan(desired, _keyed(remote, notes), prune=prune, notes=notes)
        return IntunePlan(plan.items, plan.notes, tuple(lines))

    def _scripts(self, team: str, pcs: dict[str, bytes], group: str) -> list[WantedObject]:
        out = []
        for script in build_team_scripts(team, pcs):
            table = read_table(script.content)
            wrong = sorted(s for s in script.serials if table.get(s) != pcs[s])
            if wrong or set(table) != set(script.serials):
                raise PublishError(f"the Windows script {script.display_name!r} does not hold each PC's file "
                                   f"exactly ({first_of(wrong) or 'its table'}); please report this")
            out.append(WantedObject("windows", script.display_name, team,
                                    objects.script_fields(team, script.display_name, script.file_name,
                                                          len(script.serials)),
                                    script.content, (group,), len(script.serials), script.serials))
        return out

    def _groups(self, fleet: Fleet) -> tuple[dict[str, str], list[proof.Refusal]]:
        """Each team's group id; a team without one is a refusal naming it."""
        mapping = {team.casefold(): group for team, group in fleet.groups.items()}
        found: dict[str, str] = {}
        refusals = []
        for team in fleet.teams:
            wanted = mapping.get(team.casefold(), team)
            if GUID.match(wanted):
                try:
                    data = self.client.get_json(f"/v1.0/groups/{wanted}?$select=id,displayName",
                                                doing=f"reading the group {wanted} of team {team!r}")
                    found[team] = str(data["id"])
                    continue
                except GraphError as exc:
                    if exc.status != 404:
                        raise
                    matches: list[dict[str, Any]] = []
                except KeyError:
                    matches = []
            else:
                literal = wanted.replace("'", "''")  # §4.1: OData string escaping
                condition = quote(f"displayName eq '{literal}'", safe="")
                listed = self.client.pages(f"/v1.0/groups?$filter={condition}&$select=id,displayName",
                                           doing=f"looking up the group of team {team!r}")
                matches = [g for g in listed if str(g.get("displayName", "")).casefold() == wanted.casefold()]
            if len(matches) == 1:
                found[team] = str(matches[0]["id"])
            else:
                how = "no Entra group" if not matches else f"{len(matches)} Entra groups"
                refusals.append(proof.Refusal(
                    f"team {team!r}", "group", repr(wanted), how,
                    f"{how} {'is' if not matches else 'are'} named {wanted!r} (ignoring case); create it, or map the "
                    "team to a group name or id under 'intune: groups:' in the policy"))
        return found, refusals

    def _seen(self, serials: set[str], progress: Progress) -> dict[str, list[proof.Seen]]:
        """What Intune and Entra know of each enrolled device of the output, by serial."""
        wanted = {s.upper(): s for s in serials}
        records: dict[str, list[dict[str, Any]]] = {}
        for device in self.client.pages(f"/v1.0/deviceManagement/managedDevices?$select={DEVICE_FIELDS}",
                                        doing="listing Intune's managed devices"):
            serial = wanted.get(str(device.get("serialNumber") or "").strip().upper())
            if serial is not None:
                records.setdefault(serial, []).append(device)
        user_ids = sorted({str(r["userId"]) for rs in records.values() for r in rs if r.get("userId")})
        users = self._users(user_ids, progress)
        seen: dict[str, list[proof.Seen]] = {}
        for serial, found in sorted(records.items()):
            for record in found:
                uid = str(record["userId"]) if record.get("userId") else None
                user = users.get(uid) if uid else None
                seen.setdefault(serial, []).append(proof.Seen(
                    serial, uid if user is not None else None,
                    (user or {}).get("upn") or record.get("userPrincipalName"), (user or {}).get("mail"),
                    frozenset((user or {}).get("groups", ())), str(record.get("serialNumber") or "")))
        return seen

    def _users(self, user_ids: list[str], progress: Progress) -> dict[str, dict[str, Any]]:
        """mail, UPN and transitive group ids of each user, through ``$batch``."""
        urls: dict[str, str] = {}
        for n, uid in enumerate(user_ids):
            safe = quote(uid, safe="")
            urls[f"u{n}"] = f"/users/{safe}?$select=id,mail,userPrincipalName"
            urls[f"g{n}"] = f"/users/{safe}/transitiveMemberOf?$select=id"
        keys = list(urls)
        parts = [{k: urls[k] for k in keys[start:start + MAX_BATCH]} for start in range(0, len(keys), MAX_BATCH)]
        answers: dict[str, Any] = {}
        for found in run_bounded(parts, lambda part: self.client.batch("v1.0", part, doing="looking up device users "
                                                                        "in Entra ID"),
                                 workers=self.workers, progress=progress, label="Looking up users in Entra ID"):
            answers.update(found)
        users: dict[str, dict[str, Any]] = {}
        for n, uid in enumerate(user_ids):
            user, groups = answers[f"u{n}"], answers[f"g{n}"]
            if user.status == 404:
                continue  # the device names a user that is gone: no user, so no assignment reaches it
            for answer in (user, groups):
                if not 200 <= answer.status < 300:
                    code = ((answer.body or {}).get("error") or {}).get("code", "") if isinstance(answer.body,
                                                                                                  dict) else ""
                    raise GraphError(f"Microsoft Graph answered {answer.status} while looking up user {uid} in "
                                     f"$batch{f' ({code})' if code else ''}"
                                     + ("; the app needs User.Read.All and GroupMember.Read.All" if answer.status
                                        == 403 else ""), answer.status, code)
            body = user.body if isinstance(user.body, dict) else {}
            member = groups.body if isinstance(groups.body, dict) else {}
            ids = [str(g.get("id")) for g in member.get("value") or [] if isinstance(g, dict)]
            link = member.get("@odata.nextLink")
            if isinstance(link, str) and link:
                ids += [str(g.get("id")) for g in self.client.pages(link, doing=f"listing the groups of user {uid}")]
            users[uid] = {"mail": body.get("mail"), "upn": body.get("userPrincipalName"), "groups": ids}
        return users

    def _remote(self, progress: Progress) -> list[RemoteObject]:
        """mdmgen's objects in Intune, each read by id with its assignments."""
        listed = [("macos", c) for c in self.client.pages(f"{CONFIGS}?$select=id,displayName",
                                                          doing="listing device configurations")
                  if str(c.get("displayName", "")).startswith(NAME_PREFIX)
                  and c.get("@odata.type", MACOS_TYPE) == MACOS_TYPE]
        listed += [("windows", s) for s in self.client.pages(f"{SCRIPTS}?$select=id,displayName",
                                                             doing="listing platform scripts")
                   if str(s.get("displayName", "")).startswith(NAME_PREFIX)]
        return run_bounded(listed, lambda entry: self._read(entry[0], str(entry[1]["id"])), workers=self.workers,
                           progress=progress, label="Reading Intune objects")

    def _read(self, kind: str, object_id: str) -> RemoteObject:
        collection = CONFIGS if kind == "macos" else SCRIPTS
        data = self.client.get_json(f"{collection}/{object_id}", doing=f"reading Intune object {object_id}")
        assignments = list(self.client.pages(f"{collection}/{object_id}/assignments",
                                             doing=f"reading the assignments of Intune object {object_id}"))
        content = objects.decoded_content(data.get("payload" if kind == "macos" else "scriptContent"))
        return RemoteObject(kind, object_id, str(data.get("displayName", "")), objects.compared_fields(kind, data),
                            content, objects.assigned_groups(assignments),
                            objects.devices_served(data.get("description")))

    # -- apply --

    def write(self, item: PlanItem) -> None:
        want: WantedObject = item.desired
        if item.action is Action.CREATE:
            created = self.client.request("POST", want.collection, body=want.body(create=True),
                                          doing=f"creating {want.name!r}").json()
            object_id = str(created.get("id") if isinstance(created, dict) else "")
            if not object_id:
                raise RemoteError(f"Microsoft Graph did not return the id of the new object {want.name!r}")
            self._assign(want, object_id)
        else:
            there: RemoteObject = item.remote
            object_id = there.id
            if there.content != want.content or there.fields != want.fields:
                self.client.request("PATCH", f"{want.collection}/{object_id}", body=want.body(create=False),
                                    doing=f"updating {want.name!r}")
            if tuple(sorted(there.groups)) != tuple(sorted(want.groups)):
                self._assign(want, object_id)
        self._verify(want, object_id)

    def _assign(self, want: WantedObject, object_id: str) -> None:
        self.client.request("POST", f"{want.collection}/{object_id}/assign", body=want.assign_body(),
                            doing=f"assigning {want.name!r} to the group of team {want.team!r}")

    def _verify(self, want: WantedObject, object_id: str) -> None:
        """Read the object back: the content must be what was sent (IntuneCD #264)."""
        stored = self._read(want.kind, object_id)
        if stored.content != want.content:
            raise RemoteError(f"Intune kept other content in {want.name!r} (id {object_id}) than was sent: the "
                              "write was answered as a success but the payload did not change (IntuneCD #264); "
                              "nothing more was written to it; rerun, and if it persists edit it in the portal")
        if stored.fields != want.fields or stored.groups != tuple(sorted(want.groups)):
            differ = sorted(k for k in want.fields if stored.fields.get(k) != want.fields[k])
            if stored.groups != tuple(sorted(want.groups)):
                differ.append("assignments")
            raise RemoteError(f"Intune stored {want.name!r} (id {object_id}) differently from what was sent: "
                              f"{', '.join(differ)}")

    def delete(self, item: PlanItem) -> None:
        there: RemoteObject = item.remote
        collection = CONFIGS if there.kind == "macos" else SCRIPTS
        try:
            self.client.request("DELETE", f"{collection}/{there.id}", doing=f"deleting {item.key!r}")
        except GraphError as exc:
            if exc.status != 404:  # already gone
                raise

    def close(self) -> None:
        self.client.close()


def _keyed(remote: list[RemoteObject], notes: list[Note]) -> list[Remote]:
    """Remote items by name. A second object with one of our names (a create that was retried after
    it had in fact succeeded, or a copy made in the portal) would give its devices the settings
    twice, so it gets a key of its own: stale, and deleted by ``--prune``."""
    seen: set[tuple[str, str]] = set()
    out, extra = [], []
    for obj in sorted(remote, key=lambda r: (r.kind, r.name, r.id)):
        key = obj.name
        if (obj.kind, obj.name) in seen:
            key = f"{obj.name} [duplicate, id {obj.id}]"
            extra.append(key)
        seen.add((obj.kind, obj.name))
        out.append(Remote(key, None, obj.sha256, detail=obj))
    if extra:
        notes.append(Note("duplicates", f"{len(extra)} Intune object(s) repeat the name of another of mdmgen's: "
                          f"{first_of(extra)}; --prune deletes them.", tuple(extra)))
    return out


# --- the output folder --------------------------------------------------------------------------


def read_fleet(local: LocalOutput) -> Fleet:
    """Macs and PCs per team, with what the proof needs, from the checked output folder."""
    facts_file = local.file(registry.INTUNE_TEAMS_FILE)
    if facts_file is None:
        raise LocalOutputError(f"{local.root}: no {registry.INTUNE_TEAMS_FILE}; add an 'intune:' section to the "
                               "policy ('intune: {}' is enough; 'intune: {groups: {TEAM: GROUP}}' maps teams to "
                               "Entra groups) and compile again")
    try:
        facts = registry.INTUNE_TEAMS.read_semantic(facts_file.read())["intune"]
    except ValueError as exc:
        raise LocalOutputError(f"{facts_file.path}: {exc}") from None
    emails: Mapping[str, Any] = facts["mac_emails"]
    macs: dict[str, list[proof.Mac]] = {}
    profiles: dict[str, bytes] = {}
    pcs: dict[str, dict[str, bytes]] = {}
    settings_name = registry.SETTINGS_JSON.name
    for serial, device in sorted(local.manifest.devices.items()):
        if device.platform not in (Platform.MACOS, Platform.WINDOWS) or settings_name not in device.files:
            continue
        file = local.file(device_path(serial, settings_name))
        assert file is not None
        data = file.read()
        if device.platform is Platform.WINDOWS:
            pcs.setdefault(device.team, {})[serial] = data
            continue
        try:
            settings = json.loads(data)
        except ValueError:
            raise LocalOutputError(f"{file.path}: not valid JSON") from None
        email = emails.get(serial)
        macs.setdefault(device.team, []).append(proof.Mac(serial, settings, email if isinstance(email, str) else None))
        if device.team not in profiles:
            profile = local.file(device_path(serial, registry.MAC_PROFILE.name))
            if profile is None:
                raise LocalOutputError(f"{local.root}: the Mac {serial} has no {registry.MAC_PROFILE.name}")
            profiles[device.team] = profile.read()
    return Fleet(macs, profiles, pcs, {str(k): str(v) for k, v in facts["groups"].items()},
                 bool(facts.get("pseudonymised")), tuple(local.manifest.secret_env))


def team_profile(representative: bytes, serial: str, team: str, template: dict[str, Any]) -> bytes:
    """The team's profile: the representative Mac's names (organisation, display name, identifier
    prefix), a team identifier, and the tokenised settings. Never signed: it holds tokens."""
    profile = plistlib.loads(representative)
    identifier = str(profile.get("PayloadIdentifier", "mdmgen.claudecode"))
    base = identifier[: -len(serial) - 1] if identifier.endswith("." + serial) else identifier
    shown = str(profile.get("PayloadDisplayName") or "Claude Code managed settings")
    meta = mobileconfig.ProfileMeta(identifier=f"{base}.team.{objects.slug(team)}", display_name=shown,
                                    organization=str(profile.get("PayloadOrganization") or ""))
    return mobileconfig.dumps(template, meta)


def _payload_name(payload: bytes) -> str:
    return str(plistlib.loads(payload).get("PayloadDisplayName"))


def refusal_message(refusals: list[proof.Refusal]) -> str:
    devices = sorted({r.serial for r in refusals})
    lines = [f"refusing to publish to Intune: {len(devices)} device(s) or team(s) cannot be given exactly their "
             "compiled settings, and nothing was written:"]
    lines += [f"  {r}" for r in sorted(refusals, key=lambda r: (r.serial, r.field))]
    return "\n".join(lines)


def make_publisher(graph_url: str, **kwargs: Any) -> IntunePublisher:
    """The publisher the CLI uses: credentials from the environment (RemoteError when missing)."""
    from .graph import credential_factory, secrets_of

    factory: Callable[[], Any] = credential_factory()
    return IntunePublisher(GraphClient(graph_url, factory, secrets=secrets_of(), **kwargs))
