"""pseudonymise_email: no inventory email reaches the output tree, only a keyed pseudonym.

The emails are this file's own literals, and the checks grep the raw bytes of every file of the
tree (settings, profiles, manifest, fleet files), in every form the address could be encoded.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from mdmgen import attributes, secrets

from .conftest import HEADER, SHIPPED_POLICY, run, write_inventory

KEY = "k3y-for-the-tests-only-0123456789"
OTHER_KEY = "an0ther-key-for-the-rotation-test"
ROWS = [
    ("MAC1", "macos", "Alice.Nguyen@Example.com", "Platform Eng"),
    ("LNX1", "linux", "zoë.o'brien+cc@example.com", "R&D, Berlin"),
    ("WIN1", "windows", "kim.lee@example.com", "Finance"),
    ("WSL1", "wsl", "ann+cc@example.com", "Ops"),
]
EMAILS = [email for _, _, email, _ in ROWS]


def expected_pseudonym(email: str, key: str = KEY) -> str:
    """The documented definition, restated independently of mdmgen's code."""
    local, _, domain = email.partition("@")
    normalised = f"{local}@{domain.lower()}".casefold()
    return "u-" + hmac.new(key.encode(), normalised.encode(), hashlib.sha256).hexdigest()[:32]


ATTRIBUTES = 'resource_attributes:\n  user_email: "{{ user_email }}"\n  team: "{{ team }}"\n'


def setup(workdir: Path, extra_policy: str = "pseudonymise_email: true\n", rows=ROWS,
          header: str = HEADER) -> None:
    """The inventory, and the shipped policy with its top-level keys replaced by ``extra_policy``'s."""
    write_inventory(workdir, header + "".join(",".join(f'"{c}"' for c in row) + "\n" for row in rows))
    policy = workdir / "profiles" / "policy.yaml"
    text = policy.read_text(encoding="utf-8")
    for key in ("platforms: {}\n", "teams: {}\n", ATTRIBUTES):
        if key.split(":")[0] + ":" in extra_policy:
            assert key in text, "the shipped policy changed; update this test"
            text = text.replace(key, "")
    policy.write_text(text + extra_policy, encoding="utf-8")


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.delenv(secrets.KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(secrets.KEY_ENV, KEY)


def all_bytes(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8").casefold() for p in sorted(folder.rglob("*")) if p.is_file())


def encoded_forms(email: str) -> set[str]:
    return {f.casefold() for f in (email, quote(email, safe=""), html.escape(email), json.dumps(email)[1:-1],
                                   email.partition("@")[0])}


def attributes_of(workdir: Path, serial: str) -> dict[str, str]:
    settings = json.loads((workdir / "output" / "devices" / serial / "managed-settings.json").read_text())
    return attributes.decode(settings["env"]["OTEL_RESOURCE_ATTRIBUTES"])


def test_no_inventory_email_appears_anywhere_in_the_output_tree(workdir, keyed):
    setup(workdir)
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.output
    tree = all_bytes(workdir / "output")
    assert (workdir / "output" / "devices" / "MAC1" / "claude-code.mobileconfig").exists()
    for email in EMAILS:
        for form in encoded_forms(email):
            assert form not in tree, form
    for serial, _, email, team in ROWS:
        assert attributes_of(workdir, serial) == {"user_email": expected_pseudonym(email), "team": team}


def test_same_key_gives_a_byte_identical_tree_and_another_key_other_pseudonyms(workdir, keyed, monkeypatch, tmp_path):
    setup(workdir)
    assert run(workdir, "compile").exit_code == 0
    first = {p.relative_to(workdir / "output"): p.read_bytes() for p in (workdir / "output").rglob("*") if p.is_file()}
    assert run(workdir, "compile", "--full", "--out", str(tmp_path / "again")).exit_code == 0
    again = {p.relative_to(tmp_path / "again"): p.read_bytes() for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert again == first
    monkeypatch.setenv(secrets.KEY_ENV, OTHER_KEY)
    result = run(workdir, "compile", "--json")
    summary = json.loads(result.stdout)
    assert summary["rendered"] == len(ROWS)  # the key counts in every inputs fingerprint
    assert sorted(summary["changes"]["changed"]) == sorted(serial for serial, *_ in ROWS)
    assert attributes_of(workdir, "LNX1")["user_email"] == expected_pseudonym(EMAILS[1], OTHER_KEY)
    manifest = (workdir / "output" / "manifest.json").read_text()
    for key in (KEY, OTHER_KEY):
        assert key not in manifest and key not in result.output


def test_local_part_case_does_not_change_the_pseudonym(workdir, keyed):
    setup(workdir, rows=[("LNX1", "linux", "Ann.Lee@EXAMPLE.com", "Ops"),
                         ("LNX2", "linux", "ann.lee@example.com", "Ops")])
    assert run(workdir, "compile").exit_code == 0
    assert attributes_of(workdir, "LNX1")["user_email"] == attributes_of(workdir, "LNX2")["user_email"]


def test_a_missing_or_short_key_is_one_line_and_exit_1_naming_the_variables(workdir, monkeypatch):
    setup(workdir)
    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    monkeypatch.delenv(secrets.KEY_FILE_ENV, raising=False)
    result = run(workdir, "compile")
    assert result.exit_code == 1
    [line] = [line for line in result.stderr.splitlines() if "pseudonymise_email:" in line]
    assert line.startswith("profiles/policy.yaml:") and "MDMGEN_PSEUDONYM_KEY" in line
    assert "Traceback" not in result.output and not (workdir / "output").exists()
    monkeypatch.setenv(secrets.KEY_ENV, "tooshort-secret")
    result = run(workdir, "validate")
    assert result.exit_code == 1 and "at least 16" in result.stderr and "tooshort-secret" not in result.output


def test_key_file_is_read_with_one_trailing_newline_stripped(workdir, monkeypatch, tmp_path):
    setup(workdir)
    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv(secrets.KEY_FILE_ENV, str(key_file))
    assert run(workdir, "compile").exit_code == 0
    assert attributes_of(workdir, "WIN1")["user_email"] == expected_pseudonym(EMAILS[2])
    monkeypatch.setenv(secrets.KEY_FILE_ENV, str(tmp_path))  # a folder is not a key file
    result = run(workdir, "compile")
    assert result.exit_code == 1 and "not a regular file" in result.stderr
    monkeypatch.setenv(secrets.KEY_ENV, KEY)
    result = run(workdir, "compile")
    assert result.exit_code == 1 and "set only one" in result.stderr


def test_only_raw_user_email_gets_the_address(workdir, keyed):
    setup(workdir, 'pseudonymise_email: true\nplatforms:\n  linux:\n    settings:\n'
                   '      env: {PSEUDO: "{{ user_email }}", RAW: "{{ raw_user_email }}"}\n')
    assert run(workdir, "compile").exit_code == 0
    env = json.loads((workdir / "output" / "devices" / "LNX1" / "managed-settings.json").read_text())["env"]
    assert env["PSEUDO"] == expected_pseudonym(EMAILS[1])
    assert env["RAW"] == EMAILS[1]


def test_an_email_in_another_column_is_caught_before_it_is_written(workdir, keyed):
    setup(workdir, 'pseudonymise_email: true\nresource_attributes:\n  user_email: "{{ user_email }}"\n'
                   '  team: "{{ team }}"\n  login: "{{ login }}"\n',
          rows=[(*row, row[2]) for row in ROWS], header="serial_number,platform,user_email,team,login\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    assert result.stderr.count("reaches its files through another column") == min(3, len(ROWS))
    assert not (workdir / "output").exists()


@pytest.mark.parametrize("policy", [
    'resource_attributes:\n  user_email_sha256: "{{ user_email }}"\n',
    'resource_attributes:\n  user_email: "{{ user_email | sha256 }}"\n',
    'resource_attributes:\n  user_email: "{{ user_email | md5 }}"\n',
    'resource_attributes:\n  user_email: "{{ email_hash }}"\n',
])
def test_plain_unkeyed_hashes_of_emails_are_refused_at_their_line(workdir, policy):
    setup(workdir, policy, rows=[(*row, "x") for row in ROWS],
          header="serial_number,platform,user_email,team,email_hash\n")
    result = run(workdir, "validate")
    assert result.exit_code == 1
    [line] = [line for line in result.stderr.splitlines() if "plain hash of an email" in line]
    lineno = next(i for i, text in enumerate((workdir / "profiles" / "policy.yaml").read_text().splitlines(), 1)
                  if text.startswith("  user_email") and ("sha256" in text or "md5" in text or "hash" in text))
    assert line.startswith(f"profiles/policy.yaml:{lineno}: resource_attributes.user_email")


def test_a_rotation_is_one_line_in_diff_and_a_real_change_still_shows(workdir, keyed, monkeypatch):
    setup(workdir)
    assert run(workdir, "compile", "--out", "old").exit_code == 0
    monkeypatch.setenv(secrets.KEY_ENV, OTHER_KEY)
    rows = [*ROWS[:3], ("WSL1", "wsl", "ann+cc@example.com", "Platform Eng")]  # one real team move too
    write_inventory(workdir, HEADER + "".join(",".join(f'"{c}"' for c in row) + "\n" for row in rows))
    assert run(workdir, "compile", "--out", "new").exit_code == 0
    result = run(workdir, "diff", "old", "new")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"~ user_email pseudonyms changed on all {len(ROWS)} devices (key rotation?); " \
           "no other attribute changed with them unless listed above" in lines
    assert [line for line in lines if line.startswith("~ ") and "pseudonyms" not in line] == ["~ WSL1"]
    assert lines[-1] == "0 added, 0 removed, 1 changed beyond the pseudonyms."
    assert json.loads(run(workdir, "diff", "old", "new", "--json").stdout)["pseudonyms_changed"] == len(ROWS)
    for key in (KEY, OTHER_KEY):
        assert key not in result.output


def test_one_changed_email_is_listed_per_device_not_as_a_rotation(workdir, keyed):
    setup(workdir)
    assert run(workdir, "compile", "--out", "old").exit_code == 0
    rows = [*ROWS[:3], ("WSL1", "wsl", "ann.new@example.com", "Ops")]
    write_inventory(workdir, HEADER + "".join(",".join(f'"{c}"' for c in row) + "\n" for row in rows))
    assert run(workdir, "compile", "--out", "new").exit_code == 0
    result = run(workdir, "diff", "old", "new")
    assert "pseudonyms changed" not in result.stdout
    assert "~ WSL1" in result.stdout and expected_pseudonym("ann.new@example.com") in result.stdout


def test_the_pseudonymiser_never_shows_its_key():
    pseudonymiser = secrets.Pseudonymiser(KEY.encode())
    assert KEY not in repr(pseudonymiser) and KEY not in pseudonymiser.key_id
    assert secrets.PSEUDONYM_RE.match(pseudonymiser.pseudonym("a@b.example"))


def test_the_readme_missing_key_sample_is_what_the_shipped_policy_prints(tmp_path, monkeypatch):
    from .test_readme import quoted, shipped_project

    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    monkeypatch.delenv(secrets.KEY_FILE_ENV, raising=False)
    anchor = "allow_content_logging: false\n"
    policy = SHIPPED_POLICY.read_text()
    assert anchor in policy
    result = run(shipped_project(tmp_path, policy.replace(anchor, anchor + "pseudonymise_email: true\n")), "validate")
    assert result.exit_code == 1
    assert quoted("profiles/policy.yaml:", "no key is set") in result.stderr.splitlines()


@pytest.mark.parametrize(("name", "refused"), [
    ("user_email_sha256", True), ("hashed_email", True), ("email.md5", True), ("upn-hash", True),
    ("mailing_shard", False), ("user_email", False), ("team_hash", False), ("email_domain", False),
])
def test_which_attribute_names_announce_an_email_hash(name, refused):
    from mdmgen.policy import announces_email_hash

    assert announces_email_hash(name) is refused


def raw_emails_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden sidecars, the kept generation, the compile state included)
    that holds an inventory address in any form, as its bytes are on disk."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            text = path.read_bytes().decode("utf-8", errors="replace").casefold()
            found += [f"{path.relative_to(folder)}: {email}" for email in EMAILS
                      if any(form in text for form in encoded_forms(email) - {email.partition("@")[0].casefold()})]
    return found


def test_turning_pseudonymise_on_leaves_no_raw_email_beside_the_output(workdir, keyed):
    """The tree a compile replaces is kept beside the output as the next run's staging tree; the
    first compile with pseudonymise_email must not leave the addresses in it, nor in any sidecar."""
    setup(workdir, extra_policy="")
    state = workdir / "state"
    assert run(workdir, "compile", "--out", "state/output").exit_code == 0
    assert run(workdir, "compile", "--out", "state/output").exit_code == 0  # the compile state's quiet night
    held = raw_emails_in(state)
    kept = [line for line in held if line.startswith(".output.mdmgen-prev/")]
    assert kept, held  # what must go
    assert not any(line.startswith(".output.mdmgen-state") for line in held), held  # digests, never addresses
    raw_generation = workdir / "raw-generation"
    shutil.copytree(state / ".output.mdmgen-prev", raw_generation)

    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text(encoding="utf-8") + "pseudonymise_email: true\n", encoding="utf-8")
    result = run(workdir, "compile", "--out", "state/output")
    assert result.exit_code == 0, result.output
    assert (state / ".output.mdmgen-prev" / "manifest.json").is_file()  # a kept generation, rebuilt
    assert raw_emails_in(state) == []

    # A run killed between the swap and rebuilding the generation leaves the raw one: the next
    # compile, with nothing else changed, rebuilds it too.
    shutil.rmtree(state / ".output.mdmgen-prev")
    shutil.copytree(raw_generation, state / ".output.mdmgen-prev")
    assert raw_emails_in(state)
    result = run(workdir, "compile", "--out", "state/output")
    assert result.exit_code == 0, result.output
    assert raw_emails_in(state) == []
