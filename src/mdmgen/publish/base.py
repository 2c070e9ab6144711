"""What every publisher shares: the plan, the deletion guard, a bounded parallel apply, retries.

A publisher (S3, Jamf; Intune next) does three things, and only the first is its own. The
shared flow that runs them for every target, under the output folder's lock, is
:func:`mdmgen.publish.flow.run`:

1. **Plan** — turn the local output folder and the remote state into ``Desired`` and ``Remote``
   items, then call :func:`build_plan`. Planning is pure, so ``--dry-run`` is exactly what
   ``apply`` would do, and it is easy to test.
2. **Guard** — :func:`check_deletions` refuses a plan that would delete more than
   ``--max-delete`` percent of the published *devices*. A truncated HR export must never wipe
   the fleet's settings, and counting devices (not objects or profiles) keeps the threshold
   meaning the same for every target.
3. **Apply** — :func:`apply` runs the plan's writes on a bounded thread pool, then the commit
   item(s), then the deletions, reporting to a :class:`~mdmgen.progress.Progress`.

What a publisher offers is the :class:`~mdmgen.publish.flow.Publisher` protocol. A plan is a
plain value: each item carries what ``write`` or ``delete`` needs (``PlanItem.desired`` and
``PlanItem.remote``), so applying a plan never depends on state kept from planning.

:func:`retry` is the one retry loop. Publishers that speak HTTP (Jamf, Graph) use it through
:class:`mdmgen.http.RetryPolicy`, which decides what is worth retrying and reads
``Retry-After``. It lives in :mod:`mdmgen.remote` with :class:`PublishError` and
:class:`RemoteError`, below the HTTP layer that raises them, and is re-exported here. S3 must
not use it: botocore already retries in its ``standard`` mode, and retrying on top multiplies
attempts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from ..exitcodes import ExitCode
from ..progress import NO_PROGRESS, Progress
from ..remote import PublishError as PublishError
from ..remote import RemoteError as RemoteError
from ..remote import Transient as Transient
from ..remote import copy_with_message as copy_with_message
from ..remote import retry as retry
from .defaults import MAX_DELETE_PERCENT

if TYPE_CHECKING:
    from ..output import CheckedFile as LocalFile

T = TypeVar("T")
R = TypeVar("R")


class LocalOutputError(PublishError):
    """The local output folder is missing, inconsistent with its manifest, or being replaced (exit 1)."""

    exit_code = ExitCode.INVALID_INPUT


class Unservable(PublishError):
    """The target cannot give some devices exactly their compiled settings (Intune's equivalence
    proof failed); refused before any write, exit 1 like any input the user must fix."""

    exit_code = ExitCode.INVALID_INPUT


class DeletionRefused(PublishError):
    """The plan would delete more published devices than the guard allows (exit 6)."""

    exit_code = ExitCode.DELETION_REFUSED


@dataclass(frozen=True)
class Note:
    """Something the person running a publish should know beyond the plan, for example devices the
    publisher had to skip. ``message`` is one line for the summary; ``kind`` and ``items`` (device
    serials, usually) are what ``--json`` reports."""

    kind: str
    message: str
    items: tuple[str, ...] = ()


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    DELETE = "delete"
    STALE = "stale"
    """On the remote but no longer in the output; left alone because ``--prune`` is off."""


WRITES = (Action.CREATE, Action.UPDATE)


@dataclass(frozen=True)
class Desired:
    """One thing the remote should hold after the publish.

    ``key`` is the remote's name for it (an S3 key, a Jamf profile name). ``device`` is the
    serial it belongs to, or None for fleet-wide items (the manifest). A ``commit`` item is what
    makes the others official (S3's manifest.json): it is written alone, after every other write
    succeeded and before any deletion.
    """

    key: str
    sha256: str
    size: int
    device: str | None = None
    source: LocalFile | None = None
    commit: bool = False
    detail: Any = None
    """What the target needs to write it beyond the bytes (Jamf: the profile's metadata)."""


@dataclass(frozen=True)
class Remote:
    """One thing the remote holds now.

    ``sha256`` is None when the remote holds the key but its content is not known for sure (not
    vouched for by a published manifest, or not checked): such an item is always rewritten.
    """

    key: str
    device: str | None = None
    sha256: str | None = None
    detail: Any = None
    """What the target knows of it and needs to change it (S3: the manifest's ETag for the
    conditional commit; Jamf: the profile's id and stored identifiers)."""


@dataclass(frozen=True)
class PlanItem:
    """One step of a plan, with everything ``write`` or ``delete`` needs to carry it out."""

    action: Action
    key: str
    device: str | None = None
    sha256: str | None = None
    size: int = 0
    source: LocalFile | None = None
    commit: bool = False
    desired: Any = None
    """``Desired.detail`` of the item to write."""
    remote: Any = None
    """``Remote.detail`` of the item on the remote (None when it is new)."""


@dataclass(frozen=True)
class Plan:
    """What a publish will do, item by item, in the order ``apply`` does it, and what the summary
    should say beyond the items (``notes``: Macs not enrolled in Jamf, say)."""

    items: tuple[PlanItem, ...]
    notes: tuple[Note, ...] = ()

    def of(self, *actions: Action) -> list[PlanItem]:
        return [item for item in self.items if item.action in actions]

    def counts(self) -> dict[str, int]:
        """How many items per action (every action present, zero included)."""
        counts = dict.fromkeys((a.value for a in Action), 0)
        for item in self.items:
            counts[item.action.value] += 1
        return counts

    def published_devices(self) -> set[str]:
        """Devices the remote holds anything of now: the base of the deletion percentage."""
        present = (Action.UPDATE, Action.UNCHANGED, Action.DELETE, Action.STALE)
        return {item.device for item in self.of(*present) if item.device}

    def deleted_devices(self) -> set[str]:
        """Devices that would be gone entirely (a Mac that became a Linux box loses only a file)."""
        kept = {item.device for item in self.of(*WRITES, Action.UNCHANGED) if item.device}
        return {item.device for item in self.of(Action.DELETE) if item.device} - kept

    def stale_devices(self) -> set[str]:
        kept = {item.device for item in self.of(*WRITES, Action.UNCHANGED) if item.device}
        return {item.device for item in self.of(Action.STALE) if item.device} - kept

    def lines(self) -> list[str]:
        """The plan as text for ``--dry-run``: one line per change; unchanged items only counted."""
        out = [f"{item.action.value:<7} {item.key}" for item in self.items
               if item.action not in (Action.UNCHANGED, Action.STALE)]
        out += [f"stale   {item.key}  (kept; --prune deletes it)" for item in self.of(Action.STALE)]
        return out


def build_plan(desired: Iterable[Desired], remote: Iterable[Remote], *, prune: bool,
               notes: Iterable[Note] = ()) -> Plan:
    """Compare what should be with what is.

    Order: writes (by key), then commit items, then deletions, then stale items, which is the
    order ``apply`` runs them in. When anything is written, commit items are rewritten even if
    unchanged, so the commit is always the newest write: S3 relies on that to date its objects.
    """
    remote_by_key = {r.key: r for r in remote}
    desired = sorted(desired, key=lambda d: (d.commit, d.key))
    wanted = {d.key for d in desired}
    items: list[PlanItem] = []
    for d in desired:
        there = remote_by_key.get(d.key)
        if there is None:
            action = Action.CREATE
        elif there.sha256 is not None and there.sha256 == d.sha256:
            action = Action.UNCHANGED
        else:
            action = Action.UPDATE
        items.append(PlanItem(action, d.key, d.device, d.sha256, d.size, d.source, d.commit, d.detail,
                              there.detail if there is not None else None))
    if any(i.action in WRITES for i in items if not i.commit):
        items = [replace(i, action=Action.UPDATE) if i.commit and i.action is Action.UNCHANGED else i
                 for i in items]
    gone = Action.DELETE if prune else Action.STALE
    items += [PlanItem(gone, r.key, r.device, remote=r.detail)
              for r in sorted(remote_by_key.values(), key=lambda r: r.key) if r.key not in wanted]
    return Plan(tuple(items), tuple(notes))


def check_deletions(plan: Plan, *, max_delete: float = MAX_DELETE_PERCENT, force: bool = False) -> None:
    """Refuse a plan that deletes more than ``max_delete`` percent of the published devices.

    Raises DeletionRefused with a one-line message; ``force`` skips the check. Items of no
    device (fleet-wide files) do not count: only devices disappearing from the fleet do.
    """
    deleted = len(plan.deleted_devices())
    if force or deleted == 0:
        return
    published = len(plan.published_devices())
    percent = 100.0 * deleted / published
    if percent > max_delete:
        raise DeletionRefused(
            f"refusing to delete {deleted} of {published} published devices ({percent:.0f}% > "
            f"--max-delete {max_delete:g}%); the inventory may be truncated. Check it, then rerun "
            f"with --max-delete {math.ceil(percent)} or --force")


def run_bounded(items: Sequence[T], fn: Callable[[T], R], *, workers: int,
                progress: Progress = NO_PROGRESS, label: str = "") -> list[R]:
    """``fn`` over ``items`` on at most ``workers`` threads; results in input order.

    At most ``2 * workers`` tasks are queued at once and none is queued after the first failure,
    so a remote that refuses everything (access denied) costs a handful of requests, not
    thousands. The first failure is raised once the tasks already running have finished.
    Progress is reported from the calling thread only, so a Progress need not be thread-safe.
    """
    if not items:
        return []
    results: list[R] = [None] * len(items)  # type: ignore[list-item]
    pending: dict[Future[R], int] = {}
    todo = iter(enumerate(items))
    failure: BaseException | None = None
    progress.start(len(items), label)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mdmgen-publish")
    try:
        while True:
            while failure is None and len(pending) < 2 * workers:
                nxt = next(todo, None)
                if nxt is None:
                    break
                pending[pool.submit(fn, nxt[1])] = nxt[0]
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                error = future.exception()
                if error is not None:
                    failure = failure or error
                else:
                    results[index] = future.result()
                    progress.advance()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.finish()
    if failure is not None:
        raise failure
    return results


def apply(plan: Plan, *, write: Callable[[PlanItem], None], delete: Callable[[PlanItem], None],
          workers: int = 8, progress: Progress = NO_PROGRESS) -> None:
    """Carry out a plan: writes in parallel, then commit items in order, then deletions in parallel.

    Nothing is committed unless every write succeeded, and nothing is deleted before the commit,
    so a reader that trusts the commit item (the manifest) never sees it point at a missing or
    unfinished object. A failure stops the run; the same PublishError is re-raised with what was
    achieved in its ``progress``, and rerunning converges because the plan is recomputed.
    """
    writes = [i for i in plan.of(*WRITES) if not i.commit]
    commits = [i for i in plan.of(*WRITES) if i.commit]
    deletes = plan.of(Action.DELETE)
    done = 0
    try:
        run_bounded(writes, write, workers=workers, progress=progress, label="Uploading")
        done = len(writes)
        for item in commits:
            write(item)
            done += 1
        run_bounded(deletes, delete, workers=workers, progress=progress, label="Deleting")
    except PublishError as exc:
        if done >= len(writes) + len(commits):
            where = "the new state is published but not every deletion was made"
        elif commits:
            where = "nothing was committed"
        else:  # a target without a commit item (Jamf): each finished write is already live
            where = "the writes that finished are in place"
        exc.progress = where
        raise
