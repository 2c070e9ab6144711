"""The one publish flow every target plugs into: lock -> read -> plan -> guard -> apply -> summary.

A target (S3, Jamf, Intune) implements :class:`Publisher`; :func:`run` does everything else, in
the same order for each, so the deletion guard, the dry run, the lock and the summary behave
the same whatever the destination. ``cli`` only builds the publisher from its flags, calls
:func:`run` and prints what :class:`Outcome` says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import output
from ..output import CheckedOutput as LocalOutput
from ..progress import NO_PROGRESS, Progress
from .base import Action, Note, Plan, PlanItem, apply, check_deletions
from .local import read_output


class Publisher(Protocol):
    """What a target provides. Planning reads the remote and returns a plain :class:`Plan`
    whose items carry everything ``write`` and ``delete`` need; nothing is written before
    ``write``. Errors are :class:`~mdmgen.publish.base.PublishError` subclasses."""

    noun: str
    """What one remote item is called in the summary: "file", "profile"."""
    workers: int
    """How many writes or deletions may run at once."""

    def plan(self, local: LocalOutput, *, prune: bool, progress: Progress) -> Plan: ...

    def write(self, item: PlanItem) -> None: ...

    def delete(self, item: PlanItem) -> None: ...

    def close(self) -> None:
        """Release connections; called once, whatever happened."""


@dataclass(frozen=True)
class Outcome:
    """What a publish did (or, with ``dry_run``, would do)."""

    destination: str
    out: Path
    plan: Plan
    noun: str
    dry_run: bool

    @property
    def notes(self) -> tuple[Note, ...]:
        return self.plan.notes

    def summary(self) -> str:
        counts = self.plan.counts()
        created, updated, deleted = counts["create"], counts["update"], counts["delete"]
        if self.dry_run:
            text = (f"Dry run for {self.destination}: would upload {created + updated} ({created} new, {updated} "
                    f"changed), {counts['unchanged']} unchanged, would delete {deleted}; nothing was changed.")
        else:
            text = (f"Published {self.destination}: {created + updated} uploaded ({created} new, {updated} "
                    f"changed), {counts['unchanged']} unchanged, {deleted} deleted.")
        if counts["stale"]:
            text += (f" {counts['stale']} remote {self.noun}(s) of {len(self.plan.stale_devices())} device(s) no "
                     f"longer in {self.out}/ were left in place (--prune deletes them).")
        return text

    def as_json(self) -> dict[str, Any]:
        counts = self.plan.counts()
        data: dict[str, Any] = {
            "exit_code": 0, "destination": self.destination, "dry_run": self.dry_run,
            "uploaded": counts["create"] + counts["update"], **counts,
            "devices": {"published": len(self.plan.published_devices()),
                        "deleted": len(self.plan.deleted_devices())},
            "notes": {note.kind: {"message": note.message, "items": list(note.items)} for note in self.notes}}
        if self.dry_run:
            data["plan"] = {a.value: [i.key for i in self.plan.of(a)]
                            for a in (Action.CREATE, Action.UPDATE, Action.DELETE)}
        return data


def run(out: Path, connect: Callable[[], Publisher], *, destination: str, dry_run: bool, prune: bool,
        max_delete: float, force: bool, progress: Progress = NO_PROGRESS,
        show_plan: Callable[[Plan], None] | None = None) -> Outcome:
    """Publish the output folder ``out`` with the publisher ``connect`` makes.

    The folder's lock is held shared for the whole run, so no compile can swap the folder
    mid-publish. The folder is checked against its manifest before ``connect`` is called, so a
    broken folder costs no remote request. ``show_plan`` sees the plan of a dry run before the
    deletion guard, so ``--dry-run --prune`` prints the plan and then the same refusal.
    Raises ``output.OutputUnusable`` (the folder is read as an input: exit 1), ``OutputBusy`` and
    ``PublishError`` subclasses.
    """
    with output.as_input(), output.locked(out, shared=True):
        folder = read_output(out)
        publisher = connect()
        try:
            plan = publisher.plan(folder, prune=prune, progress=progress)
            if dry_run and show_plan is not None:
                show_plan(plan)
            check_deletions(plan, max_delete=max_delete, force=force)
            if not dry_run:
                apply(plan, write=publisher.write, delete=publisher.delete, workers=publisher.workers,
                      progress=progress)
        finally:
            publisher.close()
    return Outcome(destination=destination, out=out, plan=plan, noun=publisher.noun, dry_run=dry_run)
