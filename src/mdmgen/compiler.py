"""``mdmgen compile`` end to end: the compile state, the quiet night, the compile, signing and the
write, under the output folder's lock. The command line parses the flags, calls :func:`compile_into`
and prints what it returns.

The order matters and is here once: the lock first; the compile state is read before the tree
(``output.read_state``); a night whose inputs and tree are exactly as the record says ends before
any row is read (``output.unchanged``); otherwise the tree is read under that state, the fleet is
compiled reusing what the one rule allows (``pipeline.compile_fleet``), derived files are signed,
and the folder is written (``output.write``). A signed compile records no run key: a signature is
new every time, so its night cannot be reused whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import fastpath, output, runkey
from .models import MdmgenError, Problem
from .progress import NO_PROGRESS, Progress
from .summary import RunSummary

if TYPE_CHECKING:  # imported where used: a quiet night (see ``output.state``) needs none of them
    from . import pipeline, signing


class NothingToCompile(MdmgenError):
    """Every row was rejected or excluded, or the inventory is empty: no folder is written (exit 1,
    as ``MdmgenError``)."""

    def headline(self) -> str:
        return ("error: no device to compile (every row was rejected, excluded or the inventory is empty); "
                "nothing was written.")


@dataclass(frozen=True)
class CompileRequest:
    """What ``mdmgen compile`` was asked: the inputs, the folder, ``--full`` and the signer (None: unsigned)."""

    inventories: Sequence[Path]
    profiles: Path
    variables: Mapping[str, str]
    out: Path
    skip_invalid: bool = False
    full: bool = False
    signer: signing.Signer | None = None


@dataclass(frozen=True)
class CompileOutcome:
    """What to print: the summary, the problems of rejected rows, what changed on disk, and warnings."""

    summary: RunSummary
    problems: list[Problem]
    changes: output.Changes
    warnings: list[str] = field(default_factory=list)


def compile_into(request: CompileRequest, progress: Progress = NO_PROGRESS) -> CompileOutcome:
    """Compile the fleet into ``request.out``. Raises an ``MdmgenException`` for what stops it
    (problems with the inputs, the folder busy or unwritable); rejected rows with ``skip_invalid``
    are in the outcome's problems."""
    out = request.out
    with output.locked(out), fastpath.collector_paused():
        found = output.StateRead() if request.full else output.read_state(out)
        if found.state is not None and request.signer is None:
            quiet = output.unchanged(out, found.state, lambda state: runkey.current_key(
                state.secrets, state.pseudonymised, request.inventories, request.profiles, request.variables,
                request.skip_invalid))
            if quiet is not None:
                return CompileOutcome(quiet, [], output.Changes(unchanged=quiet.devices))
        previous = output.read_previous(out, found, full=request.full)
        result = _compile(request, previous, progress)
        derived = {}
        if request.signer is not None:  # signing (and cryptography's x509) is loaded only to sign
            from . import signing

            derived = signing.sign_devices(result.devices, previous, request.signer, progress=progress)
        new_state = result.state if request.signer is None else dataclasses.replace(result.state, run_key=None)
        changes = output.write(out, output.WriteRequest(
            compiled=result.devices, fleet_files=result.fleet_files, secret_env=result.secret_env,
            secrets=result.secrets, derived=derived, new_state=new_state, pseudonymised=result.pseudonymised,
            fresh=request.full or not fastpath.enabled()), previous, progress=progress)
    warning = None
    if changes.written:  # never on a quiet night: nothing was written, and git is not started
        from . import gitcheck

        warning = gitcheck.secrets_not_ignored(out, (c.device.serial for c in result.devices if c.secrets))
    return CompileOutcome(result.summary(), result.problems, changes, [warning] if warning else [])


def validate(inventories: Sequence[Path], profiles: Path, variables: Mapping[str, str], *, skip_invalid: bool = False,
             progress: Progress = NO_PROGRESS) -> pipeline.CompileResult:
    """``mdmgen validate``: the compile's every check, in memory, with nothing read from or written to
    an output folder. Raises as :func:`compile_into` does."""
    return _compile(CompileRequest(inventories=inventories, profiles=profiles, variables=variables, out=Path(),
                                   skip_invalid=skip_invalid), None, progress)


def _compile(request: CompileRequest, previous: output.CheckedOutput | None,
             progress: Progress) -> pipeline.CompileResult:
    """The fleet compiled, reusing what the previous tree and its compile state allow (a damaged
    device is rendered again: ``reusable`` leaves it out)."""
    from . import pipeline

    reuse = previous is not None and previous.state is not None and fastpath.enabled()
    result = pipeline.compile_fleet(request.inventories, request.profiles, request.variables,
                                    skip_invalid=request.skip_invalid,
                                    previous=previous.reusable() if reuse else None, progress=progress,
                                    known_rows=previous.state.rows if reuse else None,
                                    known_parts=previous.state.parts if reuse else None)
    if not result.devices:
        raise NothingToCompile(result.problems)
    return result
