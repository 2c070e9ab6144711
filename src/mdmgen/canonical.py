"""The canonical form of a value, for fingerprints and comparisons that must not depend on key
order or formatting: the inputs fingerprint of a device, and what a Jamf profile's settings are.
One definition, so two parts of mdmgen never disagree about whether two values are the same.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr)
"""Made once: ``json.dumps`` with these options builds a new encoder on every call, and a compile
calls it for each of 100,000 devices."""


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept as is; a value JSON cannot hold (a plist date or
    data) is written as its ``repr``, so it still compares by value."""
    return _ENCODER.encode(value)


def digest(value: Any) -> str:
    """sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()
