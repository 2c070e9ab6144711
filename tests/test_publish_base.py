"""The pieces every publisher shares: plan, deletion guard, bounded apply, retry, local folder reader."""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from mdmgen import output
from mdmgen.publish import base, local
from mdmgen.publish.base import Action, Desired, Plan, PlanItem, Remote, Transient

from .conftest import run, write_inventory


def _desired(key: str, sha: str = "a", device: str | None = None, commit: bool = False) -> Desired:
    return Desired(key, sha, 1, device, None, commit)


def _actions(plan: Plan) -> dict[str, Action]:
    return {item.key: item.action for item in plan.items}


# --- plan ------------------------------------------------------------------------------------


def test_plan_compares_digests_and_treats_unknown_content_as_changed():
    plan = base.build_plan(
        [_desired("new", device="A"), _desired("same", device="B"), _desired("edited", "b", device="C"),
         _desired("unknown", device="D")],
        [Remote("same", "B", "a"), Remote("edited", "C", "a"), Remote("unknown", "D", None),
         Remote("gone", "E", "x")],
        prune=True)
    assert _actions(plan) == {"new": Action.CREATE, "same": Action.UNCHANGED, "edited": Action.UPDATE,
                              "unknown": Action.UPDATE, "gone": Action.DELETE}
    assert plan.counts() == {"create": 1, "update": 2, "unchanged": 1, "delete": 1, "stale": 0}


def test_without_prune_remote_leftovers_are_stale_not_deleted():
    plan = base.build_plan([_desired("kept", device="A")], [Remote("kept", "A", "a"), Remote("old", "B", "a")],
                           prune=False)
    assert _actions(plan) == {"kept": Action.UNCHANGED, "old": Action.STALE}
    assert plan.of(*base.WRITES, Action.DELETE) == []
    assert plan.stale_devices() == {"B"}
    assert plan.lines() == ["stale   old  (kept; --prune deletes it)"]


def test_commit_item_comes_after_writes_and_is_rewritten_when_anything_else_is_written():
    desired = [_desired("manifest", "m", commit=True), _desired("b", device="B"), _desired("a", "new", device="A")]
    remote = [Remote("manifest", None, "m"), Remote("a", "A", "old"), Remote("b", "B", "a"), Remote("z", "Z", "a")]
    plan = base.build_plan(desired, remote, prune=True)
    assert [i.key for i in plan.items] == ["a", "b", "manifest", "z"]
    assert _actions(plan)["manifest"] is Action.UPDATE  # same bytes, rewritten to stay the newest write


def test_commit_item_is_left_alone_when_nothing_else_changes():
    plan = base.build_plan([_desired("manifest", "m", commit=True), _desired("a", device="A")],
                           [Remote("manifest", None, "m"), Remote("a", "A", "a")], prune=False)
    assert plan.of(*base.WRITES, Action.DELETE) == []


def test_dry_run_lines_list_changes_but_not_unchanged_items():
    plan = base.build_plan([_desired("a", device="A"), _desired("b", device="B")],
                           [Remote("b", "B", "a"), Remote("c", "C", "a")], prune=True)
    assert plan.lines() == ["create  a", "delete  c"]


# --- deletion guard --------------------------------------------------------------------------


def _fleet_plan(published: int, removed: int, files_per_device: int = 2) -> Plan:
    remote = [Remote(f"devices/D{i}/f{j}", f"D{i}", "a") for i in range(published) for j in range(files_per_device)]
    desired = [_desired(f"devices/D{i}/f{j}", device=f"D{i}") for i in range(removed, published)
               for j in range(files_per_device)]
    return base.build_plan(desired, remote, prune=True)


def test_guard_counts_devices_not_files():
    plan = _fleet_plan(published=20, removed=2, files_per_device=3)  # 6 files, 2 devices = 10%
    assert len(plan.of(Action.DELETE)) == 6
    assert plan.deleted_devices() == {"D0", "D1"}
    base.check_deletions(plan, max_delete=10)


def test_guard_refuses_above_the_threshold_with_one_line():
    plan = _fleet_plan(published=10, removed=3)
    with pytest.raises(base.DeletionRefused) as info:
        base.check_deletions(plan)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("refusing to delete 3 of 10 published devices (30% > --max-delete 10%)")
    assert "--max-delete 30 or --force" in message
    base.check_deletions(plan, max_delete=30)
    base.check_deletions(plan, force=True)


def test_guard_ignores_a_file_dropped_from_a_device_that_stays():
    # a Mac that became a Linux box loses its profile: a deleted file, not a deleted device
    plan = base.build_plan([_desired("devices/A/settings", device="A")],
                           [Remote("devices/A/settings", "A", "a"), Remote("devices/A/profile", "A", "a")],
                           prune=True)
    assert plan.deleted_devices() == set()
    base.check_deletions(plan, max_delete=0)


# --- bounded parallel run and apply ----------------------------------------------------------


class RecordingProgress:
    def __init__(self):
        self.events: list[tuple] = []
        self.threads: set[int] = set()

    def start(self, total, label):
        self.events.append(("start", total, label))

    def advance(self, count=1):
        self.threads.add(threading.get_ident())
        self.events.append(("advance", count))

    def finish(self):
        self.events.append(("finish",))


def test_run_bounded_keeps_order_caps_concurrency_and_reports_from_the_caller_thread():
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(n):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)
        with lock:
            running -= 1
        return n * n

    progress = RecordingProgress()
    assert base.run_bounded(list(range(50)), work, workers=4, progress=progress, label="Work") == [
        n * n for n in range(50)]
    assert peak <= 4
    assert progress.events[0] == ("start", 50, "Work")
    assert progress.events[-1] == ("finish",)
    assert sum(1 for e in progress.events if e[0] == "advance") == 50
    assert progress.threads == {threading.get_ident()}


def test_run_bounded_stops_queueing_after_the_first_failure():
    calls = []

    def work(n):
        calls.append(n)
        raise base.RemoteError("access denied")

    with pytest.raises(base.RemoteError, match="access denied"):
        base.run_bounded(list(range(1000)), work, workers=4)
    assert len(calls) <= 8  # at most 2 * workers were ever queued


def _plan_for_apply() -> Plan:
    return base.build_plan(
        [_desired("m", "m2", commit=True), _desired("a", device="A"), _desired("b", device="B")],
        [Remote("m", None, "m1"), Remote("old", "C", "x")], prune=True)


def test_apply_writes_then_commits_then_deletes():
    order = []
    lock = threading.Lock()

    def record(kind):
        def call(item: PlanItem):
            with lock:
                order.append((kind, item.key))
        return call

    base.apply(_plan_for_apply(), write=record("write"), delete=record("delete"), workers=2)
    assert sorted(order[:2]) == [("write", "a"), ("write", "b")]
    assert order[2:] == [("write", "m"), ("delete", "old")]


def test_apply_re_raises_the_same_error_with_its_attributes():
    """A target's error class may carry an HTTP status and take other constructor arguments:
    apply must not rebuild it from its message."""

    class HTTPError(base.RemoteError):
        def __init__(self, message: str, *, status: int):
            super().__init__(message)
            self.status = status

    raised = HTTPError("Jamf Pro answered 503", status=503)

    def write(item):
        raise raised

    with pytest.raises(HTTPError) as info:
        base.apply(_plan_for_apply(), write=write, delete=lambda item: None, workers=1)
    assert info.value is raised and info.value.status == 503
    assert str(info.value) == "Jamf Pro answered 503 (nothing was committed; rerun to finish)"


def test_plan_items_carry_what_apply_needs():
    plan = base.build_plan([Desired("a", "new", 1, "A", None, detail="wanted-a")],
                           [Remote("a", "A", "old", detail="stored-a"), Remote("z", "Z", "x", detail="stored-z")],
                           prune=True)
    assert [(i.key, i.desired, i.remote) for i in plan.items] == [("a", "wanted-a", "stored-a"),
                                                                  ("z", None, "stored-z")]


def test_apply_commits_nothing_after_a_failed_write():
    done = []

    def write(item):
        if item.key == "b":
            raise base.RemoteError("S3 error")
        done.append(item.key)

    with pytest.raises(base.RemoteError) as info:
        base.apply(_plan_for_apply(), write=write, delete=lambda item: done.append(item.key), workers=1)
    assert "m" not in done and "old" not in done
    assert str(info.value) == "S3 error (nothing was committed; rerun to finish)"


def test_apply_without_a_commit_item_says_the_finished_writes_stand():
    plan = base.build_plan([_desired("a", device="A"), _desired("b", device="B")], [], prune=False)

    def write(item):
        if item.key == "b":
            raise base.RemoteError("Jamf error")

    with pytest.raises(base.RemoteError) as info:
        base.apply(plan, write=write, delete=lambda item: None, workers=1)
    assert str(info.value) == "Jamf error (the writes that finished are in place; rerun to finish)"


def test_apply_reports_a_failed_deletion_after_the_commit():
    def delete(item):
        raise base.RemoteError("access denied")

    with pytest.raises(base.RemoteError, match="the new state is published but not every deletion"):
        base.apply(_plan_for_apply(), write=lambda item: None, delete=delete)


# --- retry -----------------------------------------------------------------------------------


class Flaky:
    def __init__(self, failures: list[Exception]):
        self.failures = failures
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def _classify(exc):
    if isinstance(exc, TimeoutError):
        return Transient()
    if isinstance(exc, ConnectionResetError):
        return Transient(after=7)
    return None


def test_retry_backs_off_exponentially_with_jitter_and_obeys_retry_after():
    sleeps = []
    call = Flaky([TimeoutError(), TimeoutError(), ConnectionResetError(), TimeoutError()])
    assert base.retry(call, classify=_classify, sleep=sleeps.append, jitter=lambda: 0.5) == "ok"
    assert sleeps == [0.25, 0.5, 7, 2.0]


def test_retry_caps_the_wait_and_gives_up_after_the_attempts():
    sleeps = []
    call = Flaky([ConnectionResetError()] * 5)
    with pytest.raises(ConnectionResetError):
        base.retry(call, classify=_classify, attempts=3, max_delay=5, sleep=sleeps.append)
    assert call.calls == 3
    assert sleeps == [5, 5]


def test_retry_raises_a_permanent_failure_at_once():
    call = Flaky([ValueError("400")])
    with pytest.raises(ValueError):
        base.retry(call, classify=_classify, sleep=lambda s: pytest.fail("slept"))
    assert call.calls == 1


# --- the local output folder -----------------------------------------------------------------

CSV = ("serial_number,platform,user_email,team\n"
       "C02AAA111,macos,ann@example.com,platform\n"
       "LNX-222,linux,bob@example.com,data\n")


@pytest.fixture
def compiled(workdir: Path) -> Path:
    write_inventory(workdir, CSV)
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.output
    return workdir / "output"


def test_reader_loads_the_manifest_and_every_file_with_the_manifest_last(compiled: Path):
    out = local.read_output(compiled)
    assert [f.relpath for f in out.files] == [
        "devices/C02AAA111/claude-code.mobileconfig", "devices/C02AAA111/managed-settings.json",
        "devices/LNX-222/managed-settings.json", "manifest.json"]
    assert out.files[-1].sha256 == hashlib.sha256((compiled / "manifest.json").read_bytes()).hexdigest()
    assert {f.device for f in out.files} == {"C02AAA111", "LNX-222", None}
    assert out.files[0].read() == (compiled / "devices/C02AAA111/claude-code.mobileconfig").read_bytes()


def test_reader_refuses_a_missing_folder(tmp_path: Path):
    with pytest.raises(base.LocalOutputError, match="no such folder; run `mdmgen compile` first"):
        local.read_output(tmp_path / "output")


def test_reader_refuses_a_folder_without_manifest(tmp_path: Path):
    with pytest.raises(base.LocalOutputError, match=r"no manifest\.json"):
        local.read_output(tmp_path)


def test_reader_refuses_a_manifest_that_is_not_ours(compiled: Path):
    (compiled / "manifest.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(base.LocalOutputError, match="not a valid mdmgen manifest"):
        local.read_output(compiled)


@pytest.mark.parametrize("damage, expected", [
    (lambda out: (out / "devices/LNX-222/managed-settings.json").write_text("{}\n"),
     "devices/LNX-222/managed-settings.json differs from its sha256"),
    (lambda out: (out / "devices/LNX-222/managed-settings.json").unlink(),
     "devices/LNX-222/managed-settings.json is missing"),
    (lambda out: (out / "devices/LNX-222/notes.txt").write_text("hi"),
     "devices/LNX-222/notes.txt is not in manifest.json"),
])
def test_reader_refuses_files_that_do_not_match_the_manifest(compiled: Path, damage, expected):
    damage(compiled)
    with pytest.raises(base.LocalOutputError) as info:
        local.read_output(compiled)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_reader_refuses_a_folder_being_swapped(compiled: Path):
    staging = compiled.parent / ".output.mdmgen-new"
    staging.mkdir()
    with pytest.raises(base.LocalOutputError, match="a compile is replacing this folder"):
        local.read_output(compiled)


def test_publish_waits_for_no_compile_and_a_compile_waits_for_the_publish(compiled: Path):
    """A publish holds the folder's lock (shared) for its whole run: it refuses to start while a
    compile holds it, and a compile refuses to swap the folder while a publish reads it."""
    lock_path = compiled.parent / ".output.mdmgen-lock"
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run(compiled.parent, "publish", "s3://bucket/prefix", "--out", "output")
    assert result.exit_code == 5 and "is using this folder" in result.stderr
    with output.locked(compiled, shared=True):
        result = run(compiled.parent, "compile", "--out", "output")
    assert result.exit_code == 5 and "another mdmgen run (a publish?)" in result.stderr


def test_a_file_changed_after_the_check_is_refused_when_read(compiled: Path):
    out = local.read_output(compiled)
    (compiled / "devices/LNX-222/managed-settings.json").write_text("{}\n")
    with pytest.raises(base.LocalOutputError, match="changed after it was checked"):
        out.files[2].read()
