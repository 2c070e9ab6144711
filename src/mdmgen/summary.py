"""What a compile reports about its fleet: the summary line and ``--json``, and what the state
record keeps of it for a night with no change (see ``output.state``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .messages import first_of
from .models import StatusColumn


class RunSummary(BaseModel):
    """What a compile reports about its fleet (the summary line and ``--json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: int
    platforms: dict[str, int]  # by Platform value, every platform present
    excluded: int
    rejected: int
    rendered: int
    status_columns: dict[str, StatusColumn] = Field(default_factory=dict)  # by inventory file
    team_spellings: dict[str, dict[str, int]] = Field(default_factory=dict)  # see inventory.fold_teams

    def team_notes(self) -> list[str]:
        """One line per team whose rows spell it more than one way: the spelling every output
        writes, then the others and how many rows use each."""
        return [f"team {team!r}: also written " + ", ".join(f"{other!r} ({n} row{'' if n == 1 else 's'})"
                                                            for other, n in others.items())
                for team, others in self.team_spellings.items()]

    def status_note(self) -> str | None:
        """One line naming the inventory files without a status column (none of their rows can be
        excluded as a leaver), and the headers that look like one; None when every file has one."""
        missing = [(name, found) for name, found in self.status_columns.items() if found.column is None]
        if not missing:
            return None
        shown = [name + (f" ({first_of(map(repr, found.looks_like), 3)} may hold one)" if found.looks_like else "")
                 for name, found in missing[:3]]
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        which = ("has no status column, so none of its rows" if len(missing) == 1
                 else "have no status column, so none of their rows")
        return (f"Note: {', '.join(shown)}{more} {which} is excluded as a leaver; name the column that says "
                "who has left with 'columns: {status: ...}' in the policy.")
