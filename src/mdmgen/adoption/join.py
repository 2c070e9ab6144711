"""The join: enrolled people per team against the people the sources saw. Pure: no I/O, no clock.

* A person is an identity key (see :mod:`.models`); several devices of one person count once.
* A person is **active** when a source saw at least one session of theirs in the window; the
  sources are merged (either one is enough), and each is named with what it cannot see.
* A person with devices in two teams is enrolled, and counted, in both.
* **Not reporting**: the team's enrolled people who were not active, and their devices. The Admin
  API reports people, not devices, so a device is "not reporting" when its person is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from ..models import team_key
from .models import (
    Activity,
    ApiKeyUsage,
    Fleet,
    NotReporting,
    Outsider,
    Report,
    SourceLine,
    TeamRow,
)

RATIO_DIGITS = 4


def window(today: date, days: int) -> list[date]:
    """The ``days`` complete UTC days before ``today``, oldest first."""
    return [date.fromordinal(today.toordinal() - back) for back in range(days, 0, -1)]


def build(fleet: Fleet, activities: Sequence[Activity], days: Sequence[date], urls: Sequence[str],
          notes: Sequence[str] = ()) -> Report:
    """The report of ``fleet`` against what the ``activities`` saw over ``days`` (``urls``: each
    activity's source, for the report's source lines)."""
    active_days: dict[str, set[date]] = {}
    for activity in activities:
        for person, seen in activity.people.items():
            active_days.setdefault(person, set()).update(d for d in seen if d in days)
    active = {person for person, seen in active_days.items() if seen}
    teams: dict[str, dict[str, list[str]]] = {}  # team -> person -> serials
    unidentified: dict[str, list[str]] = {}
    for device in sorted(fleet.devices, key=lambda d: d.serial):
        members = teams.setdefault(device.team, {})
        if device.person is None:
            unidentified.setdefault(device.team, []).append(device.serial)
        else:
            members.setdefault(device.person, []).append(device.serial)
    rows = [_row(team, teams[team], active, active_days, days) for team in sorted(teams, key=_team_order)]
    enrolled = {person for members in teams.values() for person in members}
    return Report(
        window={"days": len(days), "from": days[0].isoformat() if days else "",
                "to": days[-1].isoformat() if days else ""},
        pseudonymised=fleet.pseudonymised,
        sources=[SourceLine(name=a.source, url=url, cannot_see=a.cannot_see) for a, url in zip(activities, urls,
                                                                                                 strict=True)],
        teams=rows,
        active_not_enrolled=_outsiders(activities, active - enrolled, active_days),
        api_key_usage=_api_keys(activities),
        unidentified_devices=sorted(s for serials in unidentified.values() for s in serials),
        notes=list(notes),
    )


def _team_order(team: str) -> tuple[str, str]:
    return (team_key(team), team)


def _row(team: str, members: dict[str, list[str]], active: set[str], active_days: dict[str, set[date]],
         days: Sequence[date]) -> TeamRow:
    people = sorted(members)
    quiet = [p for p in people if p not in active]
    count = len(people) - len(quiet)
    return TeamRow(
        team=team, enrolled=len(people), active=count,
        ratio=round(count / len(people), RATIO_DIGITS) if people else None,
        not_reporting=NotReporting(people=quiet, devices=sorted(s for p in quiet for s in members[p])),
        daily_active={d.isoformat(): sum(1 for p in people if d in active_days.get(p, ())) for d in days},
    )


def _outsiders(activities: Sequence[Activity], people: set[str], active_days: dict[str, set[date]]) -> list[Outsider]:
    found = []
    for person in sorted(people):
        counted = [a.sessions[person] for a in activities if person in a.sessions]
        team = next((a.teams[person] for a in activities if person in a.teams), None)
        found.append(Outsider(user=person, days_active=len(active_days[person]),
                              sessions=max(counted) if counted else None, team=team,
                              sources=[a.source for a in activities if active_days_in(a, person)]))
    return found


def active_days_in(activity: Activity, person: str) -> bool:
    return bool(activity.people.get(person))


def _api_keys(activities: Sequence[Activity]) -> list[ApiKeyUsage]:
    keys: dict[str, int] = {}
    for activity in activities:
        for name, sessions in activity.api_keys.items():
            keys[name] = keys.get(name, 0) + sessions
    return [ApiKeyUsage(api_key_name=name, sessions=keys[name]) for name in sorted(keys) if keys[name] > 0]
