"""What Entra ID and Intune know of the output's teams and devices: each team's group, and for each
enrolled device its primary user's mail, UPN and transitive groups. Reads only (``shared/reference/
intune-graph.md`` §4): one paged list of managed devices (cheaper than a filter per serial for a
fleet), then the users through ``$batch`` (§5.4), batches in parallel.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from ...progress import Progress
from ..base import run_bounded
from . import proof
from .fleet import Fleet
from .graph import MAX_BATCH, GraphClient, GraphError

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DEVICE_FIELDS = "id,serialNumber,userId,userPrincipalName,operatingSystem"


def team_groups(client: GraphClient, fleet: Fleet) -> tuple[dict[str, str], list[proof.Refusal]]:
    """Each team's group id. A team without one is a refusal naming it; two teams that resolve to
    one group are one refusal naming the group and the teams (its members' Macs would get both
    teams' profiles), and neither team is served."""
    found: dict[str, str] = {}
    shown: dict[str, str] = {}
    refusals = []
    for team in fleet.teams:
        wanted = fleet.groups.get(team, team)
        if GUID.match(wanted):
            try:
                data = client.get_json(f"/v1.0/groups/{wanted}?$select=id,displayName",
                                       doing=f"reading the group {wanted} of team {team!r}")
                found[team] = str(data["id"])
                shown[found[team]] = str(data.get("displayName") or wanted)
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
            listed = client.pages(f"/v1.0/groups?$filter={condition}&$select=id,displayName",
                                  doing=f"looking up the group of team {team!r}")
            matches = [g for g in listed if str(g.get("displayName", "")).casefold() == wanted.casefold()]
        if len(matches) == 1:
            found[team] = str(matches[0]["id"])
            shown[found[team]] = str(matches[0].get("displayName") or wanted)
        else:
            how = "no Entra group" if not matches else f"{len(matches)} Entra groups"
            refusals.append(proof.Refusal(
                f"team {team!r}", "group", repr(wanted), how,
                f"{how} {'is' if not matches else 'are'} named {wanted!r} (ignoring case); create it, or map the "
                "team to a group name or id under 'intune: groups:' in the policy"))
    teams_of: dict[str, list[str]] = {}
    for team, group in sorted(found.items()):
        teams_of.setdefault(group, []).append(team)
    for group, teams in sorted(teams_of.items()):
        if len(teams) > 1:
            refusals.append(proof.shared_group(shown[group], group, teams))
            for team in teams:
                del found[team]
    return found, refusals


def devices_seen(client: GraphClient, serials: set[str], progress: Progress,
                 workers: int) -> dict[str, list[proof.Seen]]:
    """What Intune and Entra know of each enrolled device of the output, by serial."""
    wanted = {s.upper(): s for s in serials}
    records: dict[str, list[dict[str, Any]]] = {}
    for device in client.pages(f"/v1.0/deviceManagement/managedDevices?$select={DEVICE_FIELDS}",
                               doing="listing Intune's managed devices"):
        serial = wanted.get(str(device.get("serialNumber") or "").strip().upper())
        if serial is not None:
            records.setdefault(serial, []).append(device)
    user_ids = sorted({str(r["userId"]) for rs in records.values() for r in rs if r.get("userId")})
    users = _users(client, user_ids, progress, workers)
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


def _users(client: GraphClient, user_ids: list[str], progress: Progress, workers: int) -> dict[str, dict[str, Any]]:
    """mail, UPN and transitive group ids of each user, through ``$batch``."""
    urls: dict[str, str] = {}
    for n, uid in enumerate(user_ids):
        safe = quote(uid, safe="")
        urls[f"u{n}"] = f"/users/{safe}?$select=id,mail,userPrincipalName"
        urls[f"g{n}"] = f"/users/{safe}/transitiveMemberOf?$select=id"
    keys = list(urls)
    parts = [{k: urls[k] for k in keys[start:start + MAX_BATCH]} for start in range(0, len(keys), MAX_BATCH)]
    answers: dict[str, Any] = {}
    doing = "looking up device users in Entra ID"
    for found in run_bounded(parts, lambda part: client.batch("v1.0", part, doing=doing), workers=workers,
                             progress=progress, label="Looking up users in Entra ID"):
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
            ids += [str(g.get("id")) for g in client.pages(link, doing=f"listing the groups of user {uid}")]
        users[uid] = {"mail": body.get("mail"), "upn": body.get("userPrincipalName"), "groups": ids}
    return users
