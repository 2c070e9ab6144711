"""The report for people (text), for spreadsheets (``--csv``) and for programs (``--json``). Pure."""

from __future__ import annotations

import csv
import io

from ..messages import first_of, printable
from .models import Report, TeamRow

SHOWN = 10
"""Names shown per list in the text form before ``(and N more)``; --json lists them all."""
TEAM_WIDTH = 32


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def by_ratio(rows: list[TeamRow]) -> list[TeamRow]:
    """Lowest adoption first (the teams to chase), then by name; a team with nobody identified last."""
    return sorted(rows, key=lambda r: (r.ratio is None, r.ratio if r.ratio is not None else 0.0, r.team))


def text(report: Report) -> list[str]:
    """The table sorted by ratio, then the not-reporting lists, each cut to a readable length."""
    window = report.window
    lines = [f"Adoption over {window['days']} complete UTC day(s), {window['from']} to {window['to']} "
             f"(lowest first):"]
    width = min(TEAM_WIDTH, max([len("TEAM"), *(len(printable(r.team)) for r in report.teams)]))
    lines.append(f"  {'TEAM':<{width}}  {'ENROLLED':>8}  {'ACTIVE':>6}  {'RATIO':>5}")
    for row in by_ratio(report.teams):
        name = printable(row.team)
        name = name if len(name) <= width else name[:width - 3] + "..."
        lines.append(f"  {name:<{width}}  {row.enrolled:>8}  {row.active:>6}  {percent(row.ratio):>5}")
    quiet = [r for r in by_ratio(report.teams) if r.not_reporting.people]
    if quiet:
        lines.append("Not reporting (enrolled, no session in the window):")
        for row in quiet:
            lines.append(f"  {printable(row.team)}: {_people(len(row.not_reporting.people))}: "
                         f"{first_of(row.not_reporting.people, SHOWN)}; devices: "
                         f"{first_of(row.not_reporting.devices, SHOWN)}")
    if report.active_not_enrolled:
        lines.append(f"Active but not enrolled ({len(report.active_not_enrolled)}): "
                     f"{first_of([printable(o.user) for o in report.active_not_enrolled], SHOWN)}")
    if report.api_key_usage:
        lines.append(f"API-key usage with no person ({len(report.api_key_usage)} key(s)): "
                     + first_of([f"{printable(k.api_key_name)} ({k.sessions} sessions)" for k in report.api_key_usage],
                                SHOWN))
    if report.unidentified_devices:
        lines.append(f"Devices that send no user_email (not counted): {first_of(report.unidentified_devices, SHOWN)}")
    return lines


def _people(count: int) -> str:
    return f"{count} {'person' if count == 1 else 'people'}"


def coverage(report: Report) -> list[str]:
    """One line per source: what it is and what it cannot see; then the notes."""
    lines = [f"source: {s.name} ({s.url}); cannot see: {s.cannot_see.split(': ', 1)[-1]}" for s in report.sources]
    return lines + [f"note: {note}" for note in report.notes]


def csv_bytes(report: Report) -> bytes:
    """The per-team table, with one column per day of the window; cells that a spreadsheet would take
    for a formula (a team called ``=HYPERLINK(...)``) are written as text."""
    days = [str(d) for d in (report.teams[0].daily_active if report.teams else {})]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["team", "enrolled", "active", "ratio", "not_reporting_people", "not_reporting_devices", *days])
    for row in report.teams:
        writer.writerow([_cell(row.team), row.enrolled, row.active, "" if row.ratio is None else f"{row.ratio:.4f}",
                         len(row.not_reporting.people), len(row.not_reporting.devices),
                         *(row.daily_active[d] for d in days)])
    return buffer.getvalue().encode("utf-8")


def _cell(value: str) -> str:
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
