"""The output folder on disk: ``devices/<SERIAL>/...``, fleet-level files, and ``manifest.json``.

The folder is a contract for publishers and auditors, so it is never seen half-written, and a
tree on disk is never trusted before it is checked:

* **Atomic swap.** The new tree is built in a hidden sibling folder (``.<name>.mdmgen-new``)
  and swapped with the old one in a single ``renameat2(RENAME_EXCHANGE)`` call on Linux, so a
  reader (or a process killed at any moment, SIGKILL included) sees either the complete old
  tree or the complete new one, each described by its own manifest.json. Where the exchange is
  unavailable, two renames are used and the next run puts a parked old tree back first.
  Leftover staging folders are removed by the next run.
* **Incremental.** Unchanged files are hard links to the previous tree's files, so they keep
  their inode and modification time; a run where nothing changed writes nothing at all. The
  tree replaced by a run is kept as ``.<name>.mdmgen-prev`` and becomes the next run's staging
  tree, so a run touches only what changed instead of rebuilding a folder per device.
* **One compile state.** ``.<name>.mdmgen-state`` (:mod:`.state`) is everything a compile
  reuses work on the strength of, bound to the manifests it was written with; nothing else
  persists between runs.
* **Checked.** One reader (:mod:`.reader`) serves compile, diff, preflight and the publishers:
  safe names only, no symlinks followed, no extra files, digests. A hand-edited file is found
  every compile (what the compile state does not vouch for is hashed) and repaired.
* **One run at a time.** An exclusive ``flock`` on ``.<name>.mdmgen-lock`` beside the folder.

Entries of the folder that mdmgen does not own (a ``.gitkeep``, a README, a ``.git`` folder)
are carried into the new tree as hard links.
"""

from .layout import (
    DEVICES_DIR,
    MANIFEST_FILE,
    OutputBusy,
    OutputError,
    OutputUnusable,
    as_input,
    device_path,
    interrupted,
    kind_of,
    sidecar,
)
from .lock import locked
from .manifest import Changes, FleetChanges, build_manifest, manifest_bytes
from .reader import Check, CheckedFile, CheckedOutput, checked, read
from .state import CompileState, NewState, StateRead
from .writer import WriteRequest, read_previous, read_state, recover, unchanged, write

__all__ = [
    "DEVICES_DIR", "MANIFEST_FILE", "Changes", "Check", "CheckedFile", "CheckedOutput", "CompileState", "FleetChanges",
    "NewState", "OutputBusy", "OutputError", "OutputUnusable", "StateRead", "WriteRequest", "as_input",
    "build_manifest", "checked", "device_path", "interrupted", "kind_of", "locked", "manifest_bytes", "read",
    "read_previous", "read_state", "recover", "sidecar", "unchanged", "write",
]
