"""The one switch for every fast path of the compiler: ``MDMGEN_NO_FASTPATH=1`` turns them all off.

What persists between runs is one record, the compile state (``output.state``), and one rule:
a device whose row digest and inputs fingerprint are the record's is reused; anything else is
computed. With the switch set a compile is a compile from scratch: no record is read or written,
no device is reused, the kept generation is not used as the staging tree, no file is linked from
the previous tree (every file is written anew), and the in-process shortcuts are off too (the
shapes, the threads, the paused garbage collector, the last parsed manifest). The output tree must
be byte-identical with the fast paths on and off: ``tests/test_state_fuzz.py`` checks that after
random sequences of nightly changes and tampering, ``tests/test_fastpath*.py`` on hostile values,
and ``benchmarks/perf.py`` at 10,000 devices. It is what a user reaches for when they suspect a
fast path (an equal tree with it set is the proof it was not).

The switch is read at each use, not at import, so tests can flip it per compile.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator

ENV_VAR = "MDMGEN_NO_FASTPATH"


def enabled() -> bool:
    """Whether the fast paths may be used: unless ``MDMGEN_NO_FASTPATH`` is set to a non-empty
    value other than ``0``."""
    return os.environ.get(ENV_VAR, "").strip() in ("", "0")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a compile.

    It relies on this: a compile is the end of its process (the CLI exits after it), and nothing
    a compile makes is freed only by the cyclic collector in amounts that matter.

    A compile of 100,000 devices holds a few million small objects (rows, models, manifest
    entries) that live until it ends, and the collector walks all of them again every few
    thousand allocations: about half of a no-change night's CPU at 30,000 devices, and more the
    larger the fleet. Nothing a compile makes depends on the collector (reference counting frees
    what is no longer used), so pausing it changes no output, only the time. The objects alive at
    the end are left to reference counting too (``gc.freeze``): a compile is the end of its process."""
    if not enabled() or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        # Frozen first: re-enabled over millions of live objects, the collector would walk them
        # all once more on the way out (0.6 s at 100,000 devices) to find nothing to free.
        gc.freeze()
        gc.enable()
