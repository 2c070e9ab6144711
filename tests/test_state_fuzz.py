"""Differential fuzzing of the compile state: random sequences of nightly changes, each followed
by a compile into the same folder (with every reuse path on) and a compile from scratch of the
same inputs (``MDMGEN_NO_FASTPATH=1``, into a new folder). After every step both must exit with
the same code and leave byte-identical trees.

The changes are those of real nights and of an adversary: rows edited, added and deleted, team
and platform moves, team overrides touching the endpoint, the protocol and the headers (with a
secret), ``--var``, a rotated secret, pseudonymisation turned on and off, and tampering with the
sidecars (a forged count or garbage in the record, the current manifest copied over the kept
generation's, a file planted in a kept device folder with old mtimes, a file of the tree edited
with its mtime set back). Under ``CI`` the examples are derandomised (see ``conftest``); their
number is fixed here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import HEADER, SHIPPED_POLICY, run, snapshot

TEAMS = ["Ops", "Sec", "R&D, Berlin", "Zürich Ops"]
PLATFORMS = ["macos", "linux", "windows", "wsl"]
TOKENS = ["tok-" + c * 28 for c in "abc"]
KEY = "k3y-for-the-fuzz-tests-only-0123456789"

rows = st.tuples(st.sampled_from(PLATFORMS), st.sampled_from(["ann", "bob", "Cat.O", "dan+x"]),
                 st.sampled_from(TEAMS))
steps = st.one_of(
    st.tuples(st.just("edit"), st.integers(0, 50), rows),
    st.tuples(st.just("add"), rows),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("team"), st.integers(0, 50), st.sampled_from(TEAMS)),
    st.tuples(st.just("platform"), st.integers(0, 50), st.sampled_from(PLATFORMS)),
    st.tuples(st.just("override"), st.sampled_from(TEAMS),
              st.sampled_from(["endpoint", "protocol", "headers", "none"])),
    st.tuples(st.just("var"), st.sampled_from([None, "https://v1.example:4317", "https://v2.example:4318"])),
    st.tuples(st.just("rotate"), st.sampled_from(TOKENS)),
    st.tuples(st.just("pseudonymise"), st.booleans()),
    st.tuples(st.just("bad row"), st.booleans()),
    st.tuples(st.just("tamper"), st.sampled_from(["forged count", "garbage record", "kept manifest", "kept plant",
                                                  "tree edit"])),
)

OVERRIDES = {
    "endpoint": {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://team.example:4318"},
    "protocol": {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    "headers": {"OTEL_EXPORTER_OTLP_HEADERS": 'Authorization=Bearer {{ secret("OTEL_TOKEN") }}'},
}


class Night:
    """The inputs of one folder, as the steps change them."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: list[tuple[str, str, str, str]] = [
            (f"SN{i:03d}", PLATFORMS[i % 4], f"user{i}@Example.com", TEAMS[i % 3]) for i in range(6)]
        self.next_serial = 6
        self.overrides: dict[str, str] = {}
        self.var: str | None = None
        self.token = TOKENS[0]
        self.pseudonymise = False
        self.bad_row = False
        (root / "profiles").mkdir()
        (root / "inventory").mkdir()

    def apply(self, step: tuple) -> None:
        kind = step[0]
        if kind == "edit" and self.rows:
            serial = self.rows[step[1] % len(self.rows)][0]
            platform, user, team = step[2]
            self.rows[step[1] % len(self.rows)] = (serial, platform, f"{user}@Example.com", team)
        elif kind == "add":
            platform, user, team = step[1]
            self.rows.append((f"NEW{self.next_serial}", platform, f"{user}@example.com", team))
            self.next_serial += 1
        elif kind == "delete" and len(self.rows) > 1:
            del self.rows[step[1] % len(self.rows)]
        elif kind in ("team", "platform"):
            i = step[1] % len(self.rows)
            serial, platform, email, team = self.rows[i]
            self.rows[i] = (serial, step[2], email, team) if kind == "platform" else (serial, platform, email, step[2])
        elif kind == "override":
            if step[2] == "none":
                self.overrides.pop(step[1], None)
            else:
                self.overrides[step[1]] = step[2]
        elif kind == "var":
            self.var = step[1]
        elif kind == "rotate":
            self.token = step[1]
        elif kind == "pseudonymise":
            self.pseudonymise = step[1]
        elif kind == "bad row":
            self.bad_row = step[1]
        elif kind == "tamper":
            tamper(self.root, step[1])

    def write(self) -> None:
        policy = SHIPPED_POLICY.read_text(encoding="utf-8")
        teams = {team: {"settings": {"env": OVERRIDES[what]}} for team, what in sorted(self.overrides.items())}
        policy = policy.replace("\nteams: {}\n", "\nteams: " + json.dumps(teams, ensure_ascii=False) + "\n")
        if self.pseudonymise:
            policy += "pseudonymise_email: true\n"
        (self.root / "profiles" / "policy.yaml").write_text(policy, encoding="utf-8")
        lines = [",".join([serial, platform, email, f'"{team}"' if "," in team else team])
                 for serial, platform, email, team in self.rows]
        if self.bad_row:
            lines.append("BAD1,beos,x@example.com,Ops")
        (self.root / "inventory" / "devices.csv").write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")

    def compile(self, out: Path) -> tuple[int, dict[str, bytes]]:
        os.environ["OTEL_TOKEN"] = self.token
        args = ["compile", "--skip-invalid", "--quiet", "--out", str(out)]
        if self.var:
            args += ["--var", f"otlp_endpoint={self.var}"]
        result = run(self.root, *args)
        assert "Traceback" not in result.output
        return result.exit_code, {k: v[0] for k, v in snapshot(out).items()}


def tamper(root: Path, how: str) -> None:
    """What an adversary (or an accident) does to the folder's sidecars or tree."""
    state = root / ".output.mdmgen-state"
    kept = root / ".output.mdmgen-prev"
    out = root / "output"
    if how == "forged count" and state.is_file():
        data = json.loads(state.read_text())
        if data.get("summary"):
            data["summary"]["devices"] = 4242
        state.write_text(json.dumps(data))
    elif how == "garbage record" and state.is_file():
        state.write_text('{"format": 1, "generator": "mdmgen"')
    elif how == "kept manifest" and (kept / "manifest.json").is_file():
        (kept / "manifest.json").unlink()
        shutil.copyfile(out / "manifest.json", kept / "manifest.json")
    elif how == "kept plant" and (kept / "devices").is_dir():
        folders = sorted(p for p in (kept / "devices").iterdir())
        if folders:
            folder = folders[0]
            info = folder.stat()
            (folder / "planted.json").write_text("{}")
            victim = sorted(folder.iterdir())[0]
            data = victim.read_bytes()
            victim.unlink()
            victim.write_bytes(data.replace(b"Ops", b"Opz"))
            for path in (folder / "planted.json", victim, folder):
                os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    elif how == "tree edit" and (out / "devices").is_dir():
        folders = sorted(p for p in (out / "devices").iterdir())
        if folders:
            victim = sorted(folders[-1].iterdir())[0]
            info = victim.stat()
            data = victim.read_bytes()
            with open(victim, "r+b") as handle:  # in place: shared with the kept generation
                handle.write(data.replace(b"otel", b"evil", 1))
            os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=1, max_size=5))
def test_every_night_leaves_the_tree_a_compile_from_scratch_makes(night_steps):
    saved = {name: os.environ.get(name) for name in ("OTEL_TOKEN", "MDMGEN_PSEUDONYM_KEY", "MDMGEN_NO_FASTPATH",
                                                     "MDMGEN_PSEUDONYM_KEY_FILE")}
    os.environ["MDMGEN_PSEUDONYM_KEY"] = KEY
    os.environ.pop("MDMGEN_PSEUDONYM_KEY_FILE", None)
    os.environ.pop("MDMGEN_NO_FASTPATH", None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "work").mkdir()
            night = Night(Path(tmp) / "work")
            night.write()
            assert night.compile(night.root / "output")[0] in (0, 3)
            for number, step in enumerate(night_steps):
                night.apply(step)
                night.write()
                code, tree = night.compile(night.root / "output")
                os.environ["MDMGEN_NO_FASTPATH"] = "1"
                try:
                    scratch_code, scratch = night.compile(Path(tmp) / f"scratch{number}")
                finally:
                    del os.environ["MDMGEN_NO_FASTPATH"]
                assert code == scratch_code, step
                assert code in (0, 3), step  # a tree was written: every step compares trees
                assert tree == scratch, step
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
