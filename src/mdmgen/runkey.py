"""The run key: one digest of everything a compile is made from, so the state record (see
``output.state``) can tell a night on which nothing the compile reads has changed.

It covers: the mdmgen version and its code (a digest of the package's source files, so a
development build or a patched install counts as another version); the Python version and the
versions of the libraries that shape the output or decide what is valid (:data:`mdmgen.versions.DEPENDENCIES`:
an email-validator upgrade may refuse an address the last night accepted); each inventory file's
name and bytes (folders expanded as the inventory stage expands them); the policy file's name and
bytes (it is the only file the policy stage reads, and templates cannot read files or the
environment); the ``--var`` overrides and ``--skip-invalid``; the keyed fingerprint of every
secret the policy resolved (never a value, see ``secrets``); and the pseudonym key's ``key_id``
when the policy pseudonymises. The file digests are taken *before* the files are read, so a file
replaced while a compile runs makes the next key differ, never match a tree made of other bytes.

The key itself is never written down: the record keeps an HMAC under it (``output.state``), which
only a compile that read the same inputs can make again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import __version__, inventory, policy, secrets, versions
from .inputfile import MAX_INVENTORY_BYTES, InputFileError, digest_input


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


def run_key(files: Iterable[tuple[str, str]], var_overrides: Mapping[str, str], skip_invalid: bool,
            secret_fingerprints: Mapping[str, str], pseudonym_key_id: str | None) -> str:
    """The digest of everything a compile is made from (see the module's docstring): ``files`` are
    the inventory files and then the policy file, as :func:`input_digests` gives them."""
    outer = hashlib.sha256()

    def part(*fields: str) -> None:
        for item in fields:
            encoded = item.encode("utf-8", "surrogatepass")
            outer.update(len(encoded).to_bytes(8, "big") + encoded)

    part("mdmgen run key v2", __version__, versions.code_digest(), "skip-invalid" if skip_invalid else "")
    for name, version in versions.dependency_versions():
        part("dependency", name, version)
    for name, digest in files:
        part("file", name, digest)
    for name, value in sorted(var_overrides.items()):
        part("var", name, value)
    for label, fingerprint in sorted(secret_fingerprints.items()):
        part("secret", label, fingerprint)
    part("pseudonym", pseudonym_key_id or "")
    return outer.hexdigest()


def current_key(secret_labels: Iterable[str], pseudonymised: bool, inventory_paths: Iterable[Path], profiles: Path,
                var_overrides: Mapping[str, str], skip_invalid: bool) -> str | None:
    """The run key a compile now would have, given the secrets and pseudonymisation the last one
    used (a changed policy changes the key through its bytes anyway): reads the input files and
    those secrets, nothing else. None at any doubt (a file gone, a secret unset): the compile
    itself then says what is wrong."""
    digests = input_digests(inventory_paths, profiles)
    if digests is None:
        return None
    policy_dir = policy.policy_file(profiles).parent
    fingerprints = {}
    try:
        for label in secret_labels:
            ref = secrets.SecretRef.from_label(label)
            fingerprints[label] = secrets.fingerprint(ref, secrets.resolve(ref, policy_dir))
        key_id = secrets.load_key().key_id if pseudonymised else None
    except (ValueError, secrets.PseudonymKeyError, OSError):
        return None
    return run_key(digests, var_overrides, skip_invalid, fingerprints, key_id)
