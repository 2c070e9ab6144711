"""The ``mdmgen`` command line: parse flags, run the stages, print.

The exit codes, and which command uses which, are in :mod:`mdmgen.exitcodes`: every
``--help`` prints them from there, and a test checks that the README lists the same. A failure
carries its own exit code (:mod:`mdmgen.errors`); every command prints one the same way
(:class:`_Command`), so nothing here maps an exception to a code. What a command prints, and how,
is :mod:`mdmgen.console`'s.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from . import __version__, console, policy, runscope
from .errors import MdmgenException
from .exitcodes import ExitCode, help_epilog
from .messages import (
    SIGN_KEY_PASSWORD_ENV,
    SIGN_P12_PASSWORD_ENV,
    environment_secrets,
    printable,
    shorten,
)
from .publish import defaults
from .secrets import resolved_values

if TYPE_CHECKING:  # imported where used: a quiet night (see ``output.state``) needs none of them
    from . import signing


class _RunPath(click.Path):
    """A path option or argument, read from the run's folder (``-C DIR``) when it is relative: as
    ``git -C`` reads its paths, but without changing the process's working directory, which is
    process-wide state a caller (a test, a long-lived program running commands) must not see move.
    Defaults (``output``, ``inventory``, ...) go through here too."""

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        base = console.run_folder(ctx)
        return path if base is None or path.is_absolute() else base / path


def _parse_vars(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict:
    parsed: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not policy.VARIABLE_NAME_RE.match(name):
            raise click.BadParameter(f"{item.split('=')[0]!r}: expected NAME=VALUE")
        parsed[name] = value
    return parsed


def _inputs(func):
    """The options compile and validate share."""
    func = click.option("--var", "variables", multiple=True, callback=_parse_vars,
                        metavar="NAME=VALUE", help="Override a policy variable (repeatable).")(func)
    func = click.option("--profiles", type=_RunPath(path_type=Path), default=Path("profiles"),
                        show_default=True, help="Policy folder (holding policy.yaml) or file.")(func)
    func = click.option("--inventory", "inventories", multiple=True,
                        type=_RunPath(path_type=Path), default=[Path("inventory")],
                        show_default=True,
                        help="Inventory CSV file or folder of CSVs (repeatable; merged).")(func)
    return func


def _skip_invalid(help_text: str):
    return click.option("--skip-invalid", is_flag=True, help=help_text)


def _reporting(func):
    """Options for how a long run talks: JSON for CI, quiet for cron, -v for logs."""
    func = click.option("-v", "--verbose", count=True, help="Log what happens (-vv for debug).")(func)
    func = click.option("-q", "--quiet", is_flag=True,
                        help="Print only problems: no summary, no progress bar.")(func)
    func = click.option("--json", "as_json", is_flag=True,
                        help="Print a machine-readable summary on stdout.")(func)
    return func


def _signing_options(func):
    """``compile``'s signing options; passwords come from the environment only (see ``signing``)."""
    func = click.option("--sign-p12", type=_RunPath(path_type=Path), metavar="FILE.p12",
                        help=f"Sign with this PKCS#12 identity instead; its password from {SIGN_P12_PASSWORD_ENV}."
                        )(func)
    func = click.option("--sign-key", type=_RunPath(path_type=Path), metavar="KEY.pem",
                        help=f"The private key of --sign-cert (if encrypted, its password from "
                             f"{SIGN_KEY_PASSWORD_ENV}).")(func)
    func = click.option("--sign-cert", type=_RunPath(path_type=Path), metavar="CERT.pem",
                        help="Also write each Mac's claude-code.signed.mobileconfig, signed with this certificate "
                             "(PEM; chain certificates after it are included).")(func)
    return func


class _Command(click.Command):
    """A command that prints mdmgen's own failures, as click's ``main`` prints a ``ClickException``:
    the located problems, then the headline, on stderr; with ``--json`` also ``{"exit_code", "error",
    "problems"}`` on stdout; then it exits with the failure's own code. A ``--var`` the policy does not
    declare reads like any malformed option (``click_usage``).

    ``json_failures=False`` for a command whose ``--json`` describes only its result (diff)."""

    def __init__(self, *args, json_failures: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.json_failures = json_failures

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MdmgenException as exc:
            if exc.click_usage:
                raise click.UsageError(str(exc), ctx) from None
            console.fail(exc.exit_code, exc.headline(), exc.problems,
                  as_json=self.json_failures and bool(ctx.params.get("as_json")), headline_printed=exc.headline_printed)


class _GuardedGroup(click.Group):
    """The exception boundary: an exception no stage turned into a user-facing message is a bug
    in mdmgen. It prints one line that names the command and asks for a report (the traceback
    only with -vv) and exits with 70 (EX_SOFTWARE), never a bare traceback that a cron mail or
    a CI log would bury the real problem under.

    Two endings are not bugs (see ``boundary``): a reader of stdout that went away
    (``| head -1``) ends quietly with 141, as Unix tools do; running out of memory, open files or
    disk space is one line and 71."""

    command_class = _Command

    def invoke(self, ctx: click.Context):
        from . import boundary

        # One run (see ``runscope``): the secrets it resolves, for the log formatter and the message
        # below. Closed with the context, after this method, so the next command starts empty.
        ctx.with_resource(runscope.run())
        try:
            try:
                return super().invoke(ctx)
            finally:
                boundary.flush_output()  # a closed pipe shows here, not in the interpreter's last flush
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            command = f"{ctx.command_path} {ctx.invoked_subcommand or ''}".strip()
            if closed := boundary.closed_streams(exc):
                boundary.end_quietly(closed)
                sys.exit(ExitCode.OUTPUT_CLOSED)
            if message := boundary.resource_message(exc, command):
                console.echo(printable(message), err=True)
                sys.exit(ExitCode.RESOURCES)
            debug = ctx.meta.get(console.DEBUG_LOGGING, False)  # the command's -vv: its logging has ended by now
            if debug:
                import traceback

                traceback.print_exc(file=sys.stderr)
            # Redacted before it is cut, so no secret (not even part of one) is printed.
            reason = printable(shorten(" ".join(str(exc).split()), 200, [*environment_secrets(), *resolved_values()]))
            console.echo(f"error: internal error in `{command}` ({type(exc).__name__}: {reason}); this is a bug in "
                       f"mdmgen {__version__}: please report it with the command you ran"
                       f"{'' if debug else ' (-vv shows the traceback)'}", err=True)
            sys.exit(ExitCode.BUG)


@click.group(name="mdmgen", cls=_GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdmgen")
@click.option("-C", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR",
              help="Run as if mdmgen was started in DIR: the command line's relative paths, the defaults too, are "
                   "read from DIR, and files under it are printed relative to it.")
def main(directory: Path | None) -> None:
    """Compile an inventory CSV and a policy into per-device Claude Code managed settings."""


@main.command(name="compile", epilog=help_epilog("compile"))
@_inputs
@_skip_invalid("Compile the valid devices and list the rejected rows (exit 3).")
@_reporting
@click.option("--out", type=_RunPath(path_type=Path), default=Path("output"),
              show_default=True, help="Output folder (replaced atomically).")
@click.option("--full", is_flag=True,
              help="Re-render every device and re-check the files on disk instead of trusting the manifest.")
@_signing_options
def compile_command(inventories, profiles, variables, skip_invalid, as_json, quiet, verbose, out, full,
                    sign_cert, sign_key, sign_p12) -> None:
    """Compile every device and write the output folder.

    Only devices whose inputs changed are rendered again, unchanged files keep their
    modification time, and a run where nothing changed writes nothing.
    """
    report = console.Report(as_json=as_json, quiet=quiet, verbose=verbose)
    signer = _signer(sign_cert, sign_key, sign_p12)  # before the lock: a bad key writes nothing
    from . import compiler

    outcome = compiler.compile_into(compiler.CompileRequest(
        inventories=inventories, profiles=profiles, variables=variables, out=out, skip_invalid=skip_invalid,
        full=full, signer=signer), progress=report.progress())
    for warning in outcome.warnings:
        report.warn(warning)
    headline = f"Compiled {console.count(outcome.summary.devices, 'device')} into {out}/"
    report.finish(outcome.summary, outcome.problems, headline, outcome.changes)


def _signer(cert: Path | None, key: Path | None, p12: Path | None) -> signing.Signer | None:
    """The checked signer of the compile's options, or None; a problem with it is exit 1
    (``signing.SigningError``), a wrong combination of options exit 2."""
    if p12 is not None and (cert is not None or key is not None):
        raise click.UsageError("--sign-p12 holds the certificate and the key: do not also pass --sign-cert or "
                               "--sign-key")
    if (cert is None) != (key is None):
        raise click.UsageError("--sign-cert and --sign-key go together (or pass --sign-p12)")
    if cert is None and p12 is None:
        return None
    from . import signing

    return signing.load_signer(cert=cert, key=key, p12=p12)


def _refuse_out(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError("validate writes nothing, so it takes no --out; use `mdmgen compile --out DIR` "
                               "to write the output folder")


@main.command(epilog=help_epilog("validate"))
@_inputs
@_skip_invalid("Check every row, list the invalid ones and exit 3 instead of 1 when the others are valid.")
@_reporting
@click.option("--out", hidden=True, expose_value=False, callback=_refuse_out, is_eager=True)
def validate(inventories, profiles, variables, skip_invalid, as_json, quiet, verbose) -> None:
    """Check the inventory and policy like compile does, without writing anything."""
    report = console.Report(as_json=as_json, quiet=quiet, verbose=verbose)
    from . import compiler

    result = compiler.validate(inventories, profiles, variables, skip_invalid=skip_invalid, progress=report.progress())
    report.finish(result.summary(), result.problems, f"Validated {console.count(len(result.devices), 'device')}", None,
                  suffix="; nothing written")


@main.command(name="diff", epilog=help_epilog("diff"), json_failures=False)
@click.argument("old", type=_RunPath(path_type=Path))
@click.argument("new", type=_RunPath(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON on stdout.")
def diff_command(old: Path, new: Path, as_json: bool) -> None:
    """Compare two output folders semantically (for audits).

    Exit codes like diff(1). Secret values are never shown, only that they changed and a short
    fingerprint.
    """
    from . import diff

    result = diff.trees(old, new)  # diff.DiffError: exit 2, diff(1)'s "trouble"
    if as_json:
        console.echo(result.model_dump_json(indent=2))
    else:
        for line in result.lines():
            console.echo(printable(line))
    sys.exit(0 if result.identical else 1)


@main.command(name="explain", epilog=help_epilog("explain"))
@click.argument("serial")
@_inputs
@click.option("--out", type=_RunPath(path_type=Path), default=Path("output"), show_default=True,
              help="The output folder to compare with (only read).")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON on stdout.")
def explain_command(serial, inventories, profiles, variables, out, as_json) -> None:
    """Explain one device: each setting's value, the policy layer and line that set it, the template
    and columns it used; then its files, the channels that deliver them, and which the client reads.

    The device is compiled as compile would, in memory; nothing is written. Secrets are shown by
    label and fingerprint only.
    """
    from . import explain

    console.Report(as_json=as_json, quiet=False, verbose=0)  # sets up logging; a failure is printed by _Command
    found = explain.explain(serial, inventories, profiles, variables, out)
    if as_json:
        console.echo(json.dumps(found.as_json(), indent=2, ensure_ascii=False))
    else:
        for line in found.lines():
            console.echo(printable(line))
    sys.exit(ExitCode.OK)


@main.command(epilog=help_epilog("schema"))
def schema() -> None:
    """Print the JSON Schema of the policy file (for editors)."""
    console.echo(json.dumps(policy.schema(), indent=2, sort_keys=True))


# --- mdmgen preflight: check the compiled collector settings before a rollout ---------------------


@main.command(name="preflight", epilog=help_epilog("preflight"))
@click.option("--device", "serial", metavar="SERIAL",
              help="Check this device only (default: each distinct collector setting of the fleet, once).")
@click.option("--out", type=_RunPath(path_type=Path), default=Path("output"), show_default=True,
              help="The compiled output folder to read.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=120), default=5.0, show_default=True,
              help="Seconds allowed for each network step: the connect, the TLS handshake, and each "
                   "whole export (headers and body, however slowly they arrive).")
@_reporting
def preflight_command(serial: str | None, out: Path, timeout: float, as_json: bool, quiet: bool,
                      verbose: int) -> None:
    """Send one empty OTLP export (metrics, logs) to each collector the compiled settings name.

    One line each for the endpoint, TLS and the token, so a wrong token is told apart from a
    wrong endpoint. Header values and secrets in an endpoint are never printed; a header is shown
    by a slow, salted fingerprint. With --json the report goes to stderr and the JSON to stdout.
    """
    from . import preflight  # imports grpc lazily: only this command needs it

    console.Report(as_json=as_json, quiet=quiet, verbose=verbose)  # sets up logging; a failure is printed by _Command
    plan = preflight.load(out, serial)
    result = preflight.run(plan, timeout, lambda line: console.echo(printable(line), err=as_json), quiet=quiet)
    if as_json:
        console.echo(json.dumps(result.as_json(), indent=2))
    sys.exit(result.exit_code)


# --- publish ---------------------------------------------------------------------------------


class _PublishGroup(_GuardedGroup):
    """``mdmgen publish s3://BUCKET/PREFIX ...`` runs the ``s3`` subcommand with the URL as its
    argument, so the destination reads naturally; other targets (``mdmgen publish jamf --url ...``)
    are plain subcommands."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0].startswith("s3://"):
            return "s3", self.get_command(ctx, "s3"), args
        return super().resolve_command(ctx, args)


@main.group(name="publish", cls=_PublishGroup)
def publish_group() -> None:
    """Upload the compiled output folder to where MDM and config-management jobs pull from.

    \b
      mdmgen publish s3://BUCKET/PREFIX [--out DIR] [--dry-run] [--prune] ...
      mdmgen publish jamf --url https://ORG.jamfcloud.com [--out DIR] [--dry-run] [--prune] ...
      mdmgen publish intune [--graph-url URL] [--out DIR] [--dry-run] [--prune] ...
    """


def _publishing(*, prune_help: str):
    """The options every publisher shares: which folder, dry run, and the deletion guard."""
    return lambda func: _publishing_options(func, prune_help)


def _publishing_options(func, prune_help: str):
    func = click.option("--force", is_flag=True, help="Skip the --max-delete guard.")(func)
    func = click.option("--max-delete", type=click.FloatRange(0, 100), default=defaults.MAX_DELETE_PERCENT,
                        show_default=True,
                        metavar="PERCENT",
                        help="With --prune, refuse to delete more than this percent of the published "
                             "devices (exit 6).")(func)
    func = click.option("--prune", is_flag=True, help=prune_help)(func)
    func = click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")(func)
    func = click.option("--out", type=_RunPath(path_type=Path), default=Path("output"),
                        show_default=True, help="The compiled output folder to publish.")(func)
    return func


@publish_group.command(name="s3", epilog=help_epilog("publish s3"))
@click.argument("destination", metavar="s3://BUCKET/PREFIX")
@_publishing(prune_help="Delete the remote files of devices no longer in the output folder.")
@click.option("--verify", is_flag=True,
              help="GET and hash every remote object instead of trusting the published manifest.")
@click.option("--sse-kms-key-id", metavar="KEY", help="Encrypt with this KMS key (aws:kms) instead of AES256.")
@click.option("--endpoint-url", metavar="URL", help="An S3-compatible endpoint (https; plain http only to loopback).")
@click.option("--region", help="AWS region (default: the AWS configuration's, else us-east-1).")
@click.option("--jobs", type=click.IntRange(1, 64), default=defaults.S3_WORKERS, show_default=True,
              help="Requests in parallel.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=defaults.S3_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="How long one connect or one socket read may take; the SDK tries each request 3 times.")
@_reporting
def publish_s3(destination, out, dry_run, prune, max_delete, force, verify, sse_kms_key_id, endpoint_url,
               region, jobs, timeout, as_json, quiet, verbose) -> None:
    """Publish to S3: only changed files are uploaded, manifest.json last.

    Credentials come from the standard AWS chain (environment, profile, SSO, instance role).
    """
    from .publish import s3  # boto3 is imported by publish commands only

    try:
        dest = s3.parse_destination(destination)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="DESTINATION") from None
    try:
        s3.check_endpoint(endpoint_url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoint-url") from None
    report = console.Report(as_json=as_json, quiet=quiet, verbose=verbose)

    def connect():
        try:
            client = s3.make_client(endpoint_url=endpoint_url, region=region, workers=jobs, timeout=timeout)
        except ValueError as exc:  # a plain-http endpoint from AWS_ENDPOINT_URL or the AWS config
            raise click.UsageError(f"the configured S3 endpoint: {exc}") from None
        return s3.S3Publisher(client, dest, kms_key_id=sse_kms_key_id, verify=verify, workers=jobs)

    _publish(report, connect, str(dest), out=out, dry_run=dry_run, prune=prune, max_delete=max_delete,
             force=force)


@publish_group.command(name="jamf", epilog=help_epilog("publish jamf"))
@click.option("--url", required=True, metavar="URL",
              help="The Jamf Pro server, e.g. https://ORG.jamfcloud.com (https; plain http only to loopback).")
@_publishing(prune_help="Delete mdmgen's profiles of Macs no longer in the output folder.")
@click.option("--category", metavar="NAME",
              help="Put the profiles in this Jamf Pro category (it must exist). Default: leave it as it is.")
@click.option("--jobs", type=click.IntRange(1, defaults.JAMF_MAX_CONNECTIONS),
              default=defaults.JAMF_MAX_CONNECTIONS, show_default=True,
              help="Connections in parallel (at most 5, Jamf's guidance).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=defaults.JAMF_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="A deadline for each whole request (connect, TLS, headers, body) before it is retried; "
                   "a request is tried at most 5 times.")
@_reporting
def publish_jamf(url, out, dry_run, prune, max_delete, force, category, jobs, timeout, as_json, quiet,
                 verbose) -> None:
    """Publish each Mac's profile to Jamf Pro, scoped to that Mac; unchanged profiles are not written.

    Credentials come only from JAMF_CLIENT_ID and JAMF_CLIENT_SECRET (an API client).
    """
    from .publish import jamf

    base_url = _checked_url(jamf.check_url, url, "--url")
    report = console.Report(as_json=as_json, quiet=quiet, verbose=verbose)

    def connect():
        client = jamf.JamfClient.from_environment(base_url, max_connections=jobs, timeout=timeout)
        return jamf.JamfPublisher(client, category=category, workers=jobs)

    _publish(report, connect, f"Jamf Pro {base_url}", out=out, dry_run=dry_run, prune=prune,
             max_delete=max_delete, force=force)


@publish_group.command(name="intune", epilog=help_epilog("publish intune"))
@_publishing(prune_help="Delete mdmgen's Intune objects that no team of the output folder needs any more.")
@click.option("--graph-url", default=defaults.GRAPH_URL, show_default=True, metavar="URL",
              help="Microsoft Graph (a national cloud, or a test server; https, plain http only to loopback).")
@_reporting
def publish_intune(out, dry_run, prune, max_delete, force, graph_url, as_json, quiet, verbose) -> None:
    """Publish to Microsoft Intune: per team one macOS profile and Windows platform script(s), assigned
    to the team's Entra group, after proving every enrolled device gets exactly its compiled settings.

    \b
    Credentials come only from the environment (azure-identity):
      AZURE_TENANT_ID, AZURE_CLIENT_ID, and one of
      AZURE_CLIENT_SECRET                      a client secret
      AZURE_CLIENT_CERTIFICATE_PATH            a PEM certificate with its key
                                               (AZURE_CLIENT_CERTIFICATE_PASSWORD if encrypted)
      AZURE_FEDERATED_TOKEN_FILE               workload identity federation (GitHub Actions OIDC)
      AZURE_AUTHORITY_HOST                     identity host (default https://login.microsoftonline.com)
      SSL_CERT_FILE, REQUESTS_CA_BUNDLE        a private CA
    """
    from .publish import intune

    base_url = _checked_url(intune.check_url, graph_url, "--graph-url")
    report = console.Report(as_json=as_json, quiet=quiet, verbose=verbose)

    def connect():
        return intune.make_publisher(base_url)

    _publish(report, connect, f"Intune via {base_url}", out=out, dry_run=dry_run, prune=prune,
             max_delete=max_delete, force=force)


def _checked_url(check, url: str, option: str) -> str:
    """A target's URL as its publisher accepts it, or a usage error (exit 2) naming the option."""
    try:
        return check(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _publish(report: console.Report, connect, destination: str, *, out: Path, dry_run: bool, prune: bool,
             max_delete: float, force: bool) -> NoReturn:
    """Run the shared publish flow and print its outcome; a failure carries its exit code."""
    from .publish import base, flow

    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)  # SDK debug logs carry signed headers

    def show_plan(plan: base.Plan) -> None:
        if not report.as_json:
            console.echo(f"Plan for {destination}:")
            for line in plan.lines():
                console.echo(line)

    outcome = flow.run(out, connect, destination=destination, dry_run=dry_run, prune=prune,
                       max_delete=max_delete, force=force, progress=report.progress(), show_plan=show_plan)
    if not report.quiet:
        console.echo(printable(outcome.summary()), err=True)
        for note in outcome.notes:
            console.echo(printable(f"note: {note.message}"), err=True)
    if report.as_json:
        console.echo(json.dumps(outcome.as_json(), indent=2))
    sys.exit(ExitCode.OK)


# --- mdmgen adoption: who is enrolled, who uses Claude Code, who never reports -----------------------


@main.command(name="adoption", epilog=help_epilog("adoption"))
@click.option("--out", type=_RunPath(path_type=Path), default=Path("output"), show_default=True,
              help="The compiled output folder to read: the devices, their team, the person each sends.")
@click.option("--days", type=click.IntRange(1, 366), default=7, show_default=True,
              help="The window: this many complete UTC days, ending before today.")
@click.option("--anthropic-url", metavar="URL",
              help=f"The Anthropic API (default {defaults.ANTHROPIC_URL}); read when ANTHROPIC_ADMIN_KEY is set.")
@click.option("--prometheus-url", metavar="URL",
              help="The org's Prometheus (its HTTP API's base URL); credentials from PROMETHEUS_BEARER_TOKEN, or "
                   "PROMETHEUS_USERNAME and PROMETHEUS_PASSWORD.")
@click.option("--csv", "csv_path", type=_RunPath(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also write the per-team table as CSV.")
@click.option("--chart", "chart_path", type=_RunPath(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also draw per-team adoption and daily active people (.png or .svg; pip install "
                   "'mdmgen[chart]').")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=defaults.ADOPTION_TIMEOUT,
              show_default=True, metavar="SECONDS", help="A deadline for each whole request; a request is tried at "
              "most 5 times.")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="console.Report as if run on this UTC day (default: today), to reproduce a past report.")
@_reporting
def adoption_command(out, days, anthropic_url, prometheus_url, csv_path, chart_path, timeout, today, as_json, quiet,
                     verbose) -> None:
    """Per team: enrolled people, those who used Claude Code in the window, and who never reports.

    \b
    Sources (one or both):
      ANTHROPIC_ADMIN_KEY      the Anthropic Admin API (an Admin key, sk-ant-admin01-...)
      --prometheus-url URL     the org's Prometheus, fed by the collector mdmgen configures
    With pseudonymise_email, MDMGEN_PSEUDONYM_KEY (the compile's key) pseudonymises the sources' emails.
    """
    from . import adoption
    from .adoption import render

    console.Report(as_json=as_json, quiet=quiet, verbose=verbose)  # sets up logging; a failure is printed by _Command
    options = adoption.Options(out=out, days=days, anthropic_url=anthropic_url, prometheus_url=prometheus_url,
                               timeout=timeout, csv=csv_path, chart=chart_path,
                               today=today.date() if today is not None else None)
    outcome = adoption.run(options)
    lines = render.coverage(outcome.report)
    if as_json:
        console.echo(json.dumps({"exit_code": 0, **outcome.report.model_dump(mode="json")}, indent=2,
                              ensure_ascii=False))
    else:
        for line in render.text(outcome.report) + lines:
            console.echo(printable(line))
    if not quiet:
        for line in (lines if as_json else []) + [f"Wrote {path}" for path in outcome.written]:
            console.echo(printable(line), err=True)
    sys.exit(ExitCode.OK)
