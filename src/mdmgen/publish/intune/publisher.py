"""Publish to Microsoft Intune: per team, one macOS profile and the Windows script(s), each assigned
to the team's Entra group, after proving every enrolled device gets exactly its compiled settings.

Planning reads, in this order, and writes nothing:

1. the output folder, per team (:mod:`.fleet`: ``intune/teams.json`` carries the policy's
   team -> group mapping and the Macs' inventory emails);
2. each team's group, and what Intune and Entra know of each enrolled device (:mod:`.directory`);
   a team with no group is refused by name;
3. the proof (:mod:`.proof`); any device that cannot be served refuses the whole publish (exit 1);
4. mdmgen's objects in Intune, each read by id with its assignments, so a change is decided on the
   decoded content itself (a description could lie after IntuneCD #264's silent PATCH).

Applying creates or PATCHes only what changed, sends the complete assignment set only when it
changed, and reads every written object back: a PATCH that kept the old payload stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ...messages import first_of
from ...output import CheckedOutput as LocalOutput
from ...progress import NO_PROGRESS, Progress
from ..base import (
    Action,
    Desired,
    Note,
    Plan,
    PlanItem,
    Remote,
    RemoteError,
    Unservable,
    build_plan,
    run_bounded,
)
from . import objects, proof
from .directory import devices_seen, team_groups
from .fleet import Fleet, payload_name, read_fleet, team_profile
from .graph import GraphClient, GraphError
from .objects import CONFIGS, MACOS_TYPE, NAME_PREFIX, SCRIPTS, RemoteObject, WantedObject
from .scripts import build_team_scripts, read_table

log = logging.getLogger("mdmgen.publish.intune")

WORKERS = 4


@dataclass(frozen=True)
class IntunePlan(Plan):
    """A plan whose objects serve whole teams: the deletion guard counts the devices each object
    serves (from its description), so ``--max-delete`` keeps meaning a share of the devices.
    ``proof`` is one line per team saying what was proven, printed by ``--dry-run`` before the plan."""

    proof: tuple[str, ...] = ()
    superseded: frozenset[str] = frozenset()
    """Keys of Windows script parts of a team that still exists but is now split differently: they
    are deleted by every publish (a stale part's table would still write old files to the PCs of its
    group), and they do not count as deleted devices, since the team's new parts serve them."""

    def lines(self) -> list[str]:
        return [*self.proof, *super().lines()]

    def _served(self, *actions: Action) -> set[str]:
        return {f"{item.key}#{n}" for item in self.of(*actions)
                for n in range(item.remote.devices if isinstance(item.remote, RemoteObject) else 0)}

    def published_devices(self) -> set[str]:
        return self._served(Action.UPDATE, Action.UNCHANGED, Action.DELETE, Action.STALE)

    def deleted_devices(self) -> set[str]:
        return {key for key in self._served(Action.DELETE) if key.rpartition("#")[0] not in self.superseded}

    def stale_devices(self) -> set[str]:
        return self._served(Action.STALE)


class IntunePublisher:
    """Plans and applies a publish to one tenant's Intune through :class:`GraphClient`."""

    noun = "object"

    def __init__(self, client: GraphClient, *, workers: int = WORKERS) -> None:
        self.client = client
        self.workers = workers

    # -- plan --

    def plan(self, local: LocalOutput, *, prune: bool, progress: Progress = NO_PROGRESS) -> Plan:
        fleet = read_fleet(local)
        groups, refusals = team_groups(self.client, fleet)
        serials = {m.serial for team in fleet.macs.values() for m in team} | {
            s for files in fleet.pcs.values() for s in files}
        seen = devices_seen(self.client, serials, progress, self.workers)
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
        wanted, lines, counts = self._wanted(fleet, groups, seen, refusals)
        kept: list[Note] = []
        remote = _keyed(self._remote(progress), kept)
        desired = [Desired(w.name, w.sha256, len(w.content), None, None, detail=w) for w in wanted]
        plan = build_plan(desired, remote, prune=prune)
        parts = {objects.windows_name(team) for team in fleet.pcs}
        superseded = frozenset(item.key for item in plan.items if item.action in (Action.STALE, Action.DELETE)
                               and objects.windows_base(item.key) in parts)
        items = tuple(replace(item, action=Action.DELETE) if item.key in superseded else item for item in plan.items)
        refusals += _reach(fleet, seen, wanted, items)
        if refusals:
            raise Unservable(refusal_message(refusals))
        notes.append(Note("proof", f"Proof: {counts[0]} enrolled Mac(s) and {counts[1]} enrolled PC(s) of "
                          f"{len(fleet.teams)} team(s) each get exactly their compiled settings, from "
                          f"{len(wanted)} Intune object(s).", ()))
        return IntunePlan(items, (*notes, *kept), tuple(lines), superseded)

    def _wanted(self, fleet: Fleet, groups: dict[str, str], seen: dict[str, list[proof.Seen]],
                refusals: list[proof.Refusal]) -> tuple[list[WantedObject], list[str], tuple[int, int]]:
        """Each served team's objects, its line of the proof, and the enrolled Macs and PCs proven;
        every reason a device of a team would not get its settings from them goes to ``refusals``."""
        wanted: list[WantedObject] = []
        proven_macs = proven_pcs = 0
        lines: list[str] = []
        for team in fleet.teams:
            group = groups.get(team)
            if group is None:
                continue
            before = (proven_macs, proven_pcs, len(wanted))
            macs = fleet.macs.get(team, [])
            if macs:
                template = proof.team_template(macs[0])
                refusals += proof.prove(team, macs, seen, group_id=group, template=template,
                                        pseudonymised=fleet.pseudonymised, secret_fields=fleet.secret_env)
                proven_macs += sum(1 for m in macs if m.serial in seen)
                payload = team_profile(fleet.mac_profiles[team], macs[0].serial, team, template)
                wanted.append(WantedObject("macos", objects.macos_name(team), team,
                                           objects.macos_fields(team, len(macs), payload_name(payload)),
                                           payload, (group,), len(macs), tuple(m.serial for m in macs)))
            pcs = fleet.pcs.get(team, {})
            for serial in sorted(pcs):
                for record in seen.get(serial, []):
                    refusals += proof.membership(team, record, group_id=group)
                proven_pcs += 1 if serial in seen else 0
            if pcs:
                wanted += self._scripts(team, pcs, group)
            lines.append(f"proof   {team}: group {group}; {proven_macs - before[0]} of {len(macs)} Mac(s) and "
                         f"{proven_pcs - before[1]} of {len(pcs)} PC(s) enrolled, each proven to get exactly its "
                         f"compiled settings from {len(wanted) - before[2]} object(s)")
        return wanted, lines, (proven_macs, proven_pcs)

    def _scripts(self, team: str, pcs: dict[str, bytes], group: str) -> list[WantedObject]:
        out = []
        for script in build_team_scripts(team, pcs):
            table = read_table(script.content)
            wrong = sorted(s for s in script.serials if table.get(s) != pcs[s])
            if wrong or set(table) != set(script.serials):
                # mdmgen's own self-check, not the user's or Graph's doing: a bug (exit 70)
                raise RuntimeError(f"the Windows script {script.display_name!r} does not hold each PC's file "
                                   f"exactly ({first_of(wrong) or 'its table'})")
            out.append(WantedObject("windows", script.display_name, team,
                                    objects.script_fields(team, script.display_name, script.file_name,
                                                          len(script.serials)),
                                    script.content, (group,), len(script.serials), script.serials))
        return out

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


def _reach(fleet: Fleet, seen: dict[str, list[proof.Seen]], wanted: list[WantedObject],
           items: tuple[PlanItem, ...]) -> list[proof.Refusal]:
    """From each enrolled device's groups, the mdmgen objects that will reach it once the plan is
    applied: the ones written (assigned to their team's group only) and the ones left in place as
    Intune holds them. A Mac needs exactly one profile for the domain, a PC one script with its file."""
    after: dict[str, list[proof.Reaching]] = {"macos": [], "windows": []}
    for want in wanted:
        after[want.kind].append(proof.Reaching(want.name, frozenset(want.groups), serials=(
            frozenset(want.serials) if want.kind == "windows" else None)))
    for item in items:
        if item.action is Action.STALE and isinstance(item.remote, RemoteObject):
            after[item.remote.kind].append(_left(item.remote))
    refusals = []
    for kind, devices in (("macos", [m.serial for ms in fleet.macs.values() for m in ms]),
                          ("windows", [s for files in fleet.pcs.values() for s in files])):
        for serial in sorted(devices):
            for record in seen.get(serial, []):
                refusals += proof.one_object(record, after[kind], windows=kind == "windows")
    return refusals


def _left(there: RemoteObject) -> proof.Reaching:
    """An object this publish leaves as it is, and whom it reaches: its group targets, or anyone
    when it has another kind of target (an exclusion alone reaches no one)."""
    targets = [g for g in there.groups if "exclusionGroupAssignmentTarget" not in g]
    serials = None
    if there.kind == "windows" and there.content is not None:
        try:
            serials = frozenset(read_table(there.content))
        except ValueError:
            serials = None
    return proof.Reaching(f"{there.name} (id {there.id})", frozenset(g for g in targets if not g.startswith("<")),
                          everyone=any(g.startswith("<") for g in targets), serials=serials, left=True)


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
