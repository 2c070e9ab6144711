"""Each target's defaults and limits, in a module that imports nothing.

``--help`` shows them, and the CLI must not import boto3 or httpx to draw its help (that costs
every command a third of a second); the targets use the same names, so a default is written once.
"""

MAX_DELETE_PERCENT = 10.0
"""Percent of the published devices a prune may delete without ``--force``."""

S3_WORKERS = 16
S3_TIMEOUT = 15.0
"""Seconds one connect or read may take. botocore's standard mode tries a request 3 times, so a
silent endpoint fails the run in about 3 x this, not in minutes (its own default is 60 s)."""

JAMF_MAX_CONNECTIONS = 5
"""Jamf's guidance: at most 5 concurrent connections (jamf-pro-api.md §8)."""
JAMF_TIMEOUT = 60.0

GRAPH_URL = "https://graph.microsoft.com"
"""Microsoft Graph; the Intune client uses /beta (and /v1.0) under it."""

ANTHROPIC_URL = "https://api.anthropic.com"
"""The Anthropic API, whose Admin API reports Claude Code usage per person (``mdmgen adoption``)."""
ADOPTION_TIMEOUT = 30.0
"""Seconds for each whole request of ``mdmgen adoption`` (a page of the Admin API, a Prometheus query)."""
