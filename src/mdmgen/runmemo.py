"""The run memo: a night on which nothing the compile reads has changed does no work at all.

A compile that succeeded without a problem (and without signing) leaves ``.<name>.mdmgen-run``
beside the output folder: a digest of everything the compile was made from (the *run key*),
the summary it printed, the digests of the manifests it left (the folder's and the kept
generation's) and a compact listing of the tree (each device folder and the size of each file).

The next compile computes the run key again before it loads anything else. When the key, both
manifests and every folder and file of the tree are as the memo says (each ``lstat``-ed: the
right type and size, and older than the manifest, the cheap check of ``output.reader``), the
tree is left alone and the summary is printed again, without reading the inventory's rows,
rendering or parsing the 100,000-entry manifest. At the first doubt the normal compile runs,
which repairs what the check found and then writes a new memo. The kept generation is not
surveyed here: the next compile that uses it as its staging tree checks it first.

The run key covers: the mdmgen version and its code (a digest of the package's source files, so
a development build or a patched install counts as another version); each inventory file's name
and bytes (folders expanded as the inventory stage expands them); the policy file's name and
bytes (it is the only file the policy stage reads, and templates cannot read files or the
environment); the ``--var`` overrides and ``--skip-invalid``; the keyed fingerprint of every
secret the policy resolved (never a value, see ``secrets``); and the pseudonym key's ``key_id``
when the policy pseudonymises. Signing (which depends on the certificate and on today's date)
never uses the memo. ``MDMGEN_NO_FASTPATH=1`` ignores it.

A forged memo can at worst make one compile leave a tree that someone could edit anyway (the
memo sits beside it, with the same permissions); it never makes mdmgen write anything.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from . import __version__, inventory, policy, secrets
from .inputfile import MAX_INVENTORY_BYTES, InputFileError, digest_input
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


class RunRecord(BaseModel):
    """What a compile knows of its own run, for the memo: the key, and what the next run needs to
    compute it again and to report as this one did."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    secrets: list[str]  # labels of the secrets the policy resolved (their fingerprints are in ``key``)
    pseudonymised: bool
    summary: RunSummary  # as a night with no change reports it (nothing rendered), the same every night


class RunMemoFile(RunRecord):
    """``.<name>.mdmgen-run``: a run's record, bound to the trees it left; see the module's docstring."""

    generator: str
    version: str
    manifest_sha256: str
    kept_sha256: str
    folders: list[str]  # the folders of the fleet files, from the tree's root
    fleet: dict[str, int]  # fleet files: path from the tree's root -> size
    devices: dict[str, list[str | int]]  # "name/name" (a device's file names) -> serial, size, size, ...


def input_digests(inventory_paths: Iterable[Path], profiles: Path) -> list[tuple[str, str]] | None:
    """(name, sha256) of each inventory file (folders expanded as the inventory stage expands
    them) and then of the policy file, for :func:`run_key`; None when one is missing or cannot be
    read (the compile itself then says why). A compile takes them *before* it reads the files, so
    a file replaced while it runs makes the next run's key differ, never match a tree made from
    other bytes."""
    files, problems = inventory.find_csv_files(inventory_paths)
    if problems:
        return None
    return file_digests([*files, policy.policy_file(profiles)])


def file_digests(paths: Iterable[Path]) -> list[tuple[str, str]] | None:
    """(name, sha256) of each file, read as an input; None when one cannot be read."""
    try:
        return [(str(path), digest_input(path, MAX_INVENTORY_BYTES)) for path in paths]
    except (OSError, InputFileError):  # a FIFO or /dev/zero too: refused, never read
        return None


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over mdmgen's own source files (a few hundred KB): the code is an input too."""
    package = Path(__file__).parent
    outer = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        outer.update(f"{path.relative_to(package).as_posix()}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return outer.hexdigest()


def run_key(files: Iterable[tuple[str, str]], var_overrides: Mapping[str, str], skip_invalid: bool,
            secret_fingerprints: Mapping[str, str], pseudonym_key_id: str | None) -> str:
    """The digest of everything a compile is made from (see the module's docstring): ``files`` are
    the inventory files and then the policy file, as :func:`input_digests` gives them."""
    outer = hashlib.sha256()

    def part(*fields: str) -> None:
        for item in fields:
            encoded = item.encode("utf-8", "surrogatepass")
            outer.update(len(encoded).to_bytes(8, "big") + encoded)

    part("mdmgen run key v1", __version__, code_digest(), "skip-invalid" if skip_invalid else "")
    for name, digest in files:
        part("file", name, digest)
    for name, value in sorted(var_overrides.items()):
        part("var", name, value)
    for label, fingerprint in sorted(secret_fingerprints.items()):
        part("secret", label, fingerprint)
    part("pseudonym", pseudonym_key_id or "")
    return outer.hexdigest()


def inputs_unchanged(memo: RunMemoFile, inventory_paths: Iterable[Path], profiles: Path,
                     var_overrides: Mapping[str, str], skip_invalid: bool) -> bool:
    """Whether a compile now would be made from exactly what the compile that wrote ``memo`` was
    (see the module's docstring): reads the input files and the secrets the policy used, nothing else. Any
    doubt (a file gone, a secret unset) is False, and the compile itself says what is wrong."""
    digests = input_digests(inventory_paths, profiles)
    if digests is None:
        return False
    policy_dir = policy.policy_file(profiles).parent
    fingerprints = {}
    try:
        for label in memo.secrets:
            ref = secrets.SecretRef.from_label(label)
            fingerprints[label] = secrets.fingerprint(ref, secrets.resolve(ref, policy_dir))
        key_id = secrets.load_key().key_id if memo.pseudonymised else None
    except (ValueError, secrets.PseudonymKeyError, OSError):
        return False
    return run_key(digests, var_overrides, skip_invalid, fingerprints, key_id) == memo.key
