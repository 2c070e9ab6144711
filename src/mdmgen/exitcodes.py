"""Exit codes: what each one means, and which commands use which.

This is the one source for every command's ``--help`` (``cli`` prints :func:`help_epilog`)
and for the README's tables, which ``tests/test_readme.py`` compares with it, so the two
cannot drift apart. Cron and CI scripts branch on these numbers: a code never changes meaning.

Which failure ends with which code is decided by the failure itself: each
:class:`~mdmgen.errors.MdmgenException` subclass declares its ``exit_code``, and
``tests/test_errors.py`` checks that every one it declares is in a command's table here.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INVALID_INPUT = 1
    USAGE = 2
    ROWS_REJECTED = 3
    OUTPUT_FAILED = 4
    BUSY = 5
    DELETION_REFUSED = 6
    REMOTE_FAILED = 7
    BUG = 70
    """An internal error (sysexits' EX_SOFTWARE): any command, reported in one line."""
    RESOURCES = 71
    """The machine ran out of memory, open files or disk space (sysexits' EX_OSERR): any command, one line
    naming the resource and the limit to raise."""
    OUTPUT_CLOSED = 141
    """The reader of stdout (or stderr) went away, as in ``mdmgen diff A B | head -1``: any command ends
    quietly, with the status a shell reports for a Unix tool killed by SIGPIPE (128 + 13)."""


_USAGE = "usage: an unknown option or a malformed value"
_BUSY_PUBLISH = "a compile holds the output folder"
_OUTPUT_UNREADABLE = "the output folder is missing, does not match its manifest, or a compile is replacing it"
_GUARD = "--prune was refused by --max-delete; nothing was written"

COMMANDS: dict[str, dict[int, str]] = {
    "compile": {
        0: "compiled",
        1: "input or validation errors, listed as file:line: field: message; nothing was written",
        2: "usage: an unknown option, or a --var that is malformed or not declared in the policy",
        3: "--skip-invalid compiled the valid devices and rejected some rows (listed)",
        4: "the output folder could not be written; the previous output is left as it was",
        5: "another mdmgen run holds the output folder",
    },
    "validate": {
        0: "every device is valid",
        1: "input or validation errors, listed as file:line: field: message",
        2: "usage: an unknown option, or a --var that is malformed or not declared in the policy",
        3: "--skip-invalid: some rows are invalid (listed) and the others are valid",
    },
    "diff": {
        0: "the two folders are identical",
        1: "they differ",
        2: "trouble: a missing folder, one that is not an mdmgen output folder, or an unreadable file",
    },
    "preflight": {
        0: "every check passed",
        1: "the output folder cannot be checked, and nothing was sent",
        2: _USAGE,
        5: "a compile holds the output folder",
        7: "at least one collector check failed (unreachable, TLS, wrong endpoint, token rejected)",
    },
    "publish s3": {
        0: "published (or, with --dry-run, planned)",
        1: _OUTPUT_UNREADABLE,
        2: "usage: a malformed s3:// URL, or a plain-http or credential-bearing --endpoint-url; an environment "
           "variable that cannot be used (named)",
        5: _BUSY_PUBLISH,
        6: _GUARD,
        7: "S3 failed or refused: missing bucket, access denied, credentials, unreachable or silent "
           "endpoint, TLS, checksum mismatch, a concurrent publish",
    },
    "publish jamf": {
        0: "published (or, with --dry-run, planned), including when some Macs are not enrolled",
        1: _OUTPUT_UNREADABLE,
        2: "usage: a --url that is not https (plain http only to loopback), carries credentials or "
           "has a query; --jobs above 5; an environment variable that cannot be used (named)",
        5: _BUSY_PUBLISH,
        6: _GUARD,
        7: "Jamf Pro failed or refused: credentials missing or rejected, a missing privilege, "
           "unreachable, TLS, retries exhausted, a 409, a profile that reads back differently",
    },
    "publish intune": {
        0: "published (or, with --dry-run, planned), including when some devices are not enrolled",
        1: _OUTPUT_UNREADABLE + "; or the proof refused: a device would not get exactly its compiled "
           "settings, or a team has no group (each listed); nothing was written",
        2: "usage: a --graph-url that is not https (plain http only to loopback) or has a path; an "
           "environment variable that cannot be used (named)",
        5: _BUSY_PUBLISH,
        6: _GUARD,
        7: "Graph or Entra ID failed or refused: credentials missing or rejected, a missing permission, "
           "unreachable, TLS, retries exhausted, an object that reads back differently",
    },
    "adoption": {
        0: "reported (an organisation with no usage is a result)",
        1: _OUTPUT_UNREADABLE,
        2: "usage: no source (neither ANTHROPIC_ADMIN_KEY nor --prometheus-url), --anthropic-url without "
           "ANTHROPIC_ADMIN_KEY, a URL that is not https (plain http only to loopback), a --chart that is not .png "
           "or .svg (or matplotlib missing), a pseudonymised folder without its key; an environment variable that "
           "cannot be used (named)",
        4: "the --csv or --chart file could not be written",
        5: _BUSY_PUBLISH,
        7: "a source failed or refused: the Admin API or Prometheus unreachable, TLS, the key or credentials "
           "rejected, retries exhausted (429, 5xx, 529), an unexpected answer",
    },
    "explain": {
        0: "explained",
        1: "the serial is not in the inventory (nearest serials suggested), its row is excluded by status, or "
           "the row, the device or the policy has problems (listed as file:line: field: message)",
        2: "usage: an unknown option, or a --var that is malformed or not declared in the policy",
    },
    "schema": {
        0: "printed",
        2: _USAGE,
    },
}


def help_epilog(command: str) -> str:
    """The exit-code list printed at the end of ``mdmgen COMMAND --help`` (``\\b`` keeps click
    from re-wrapping it into one paragraph)."""
    lines = [f"  {code}  {meaning}" for code, meaning in COMMANDS[command].items()]
    return "\b\nExit codes:\n" + "\n".join(lines)
