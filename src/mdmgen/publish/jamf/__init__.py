"""Publish each Mac's profile to Jamf Pro, one computer-level profile per Mac, scoped to that Mac.

Three modules, one concern each:

* :mod:`.client`: the Jamf Pro client (credentials, the OAuth token, Jamf's error pages), on the
  shared HTTP layer (:mod:`mdmgen.http`: pool, proxies, TLS, the retry policy).
* :mod:`.profiles`: what a profile is, what counts as a change (settings and Jamf fields, not the
  metadata Jamf rewrites or derives), and the XML that writes it.
* :mod:`.publisher`: plan and apply: the lookups, reads, creates, updates and deletions.
"""

from .client import (
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    JamfClient,
    JamfHTTPError,
    check_url,
    credentials_from,
    error_reason,
)
from .profiles import NAME_PREFIX, SERVER_KEYS, description, profile_name, serial_of, settings_of
from .publisher import JamfPublisher

__all__ = [
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "NAME_PREFIX",
    "SERVER_KEYS",
    "JamfClient",
    "JamfHTTPError",
    "JamfPublisher",
    "check_url",
    "credentials_from",
    "description",
    "error_reason",
    "profile_name",
    "serial_of",
    "settings_of",
]
