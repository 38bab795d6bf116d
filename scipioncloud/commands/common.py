"""What every command shares: --region/--profile/--json, and one way to end with a one-line error
(exit 2 for bad input, 1 for a failed operation)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import click
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    SSOTokenLoadError,
    TokenRetrievalError,
    UnauthorizedSSOTokenError,
    WaiterError,
)

from agent.s3 import errors as s3errors
from scipioncloud.aws import Aws
from scipioncloud.errors import BadInput, CliError, Interrupted, OperationFailed, from_client_error
from scipioncloud.output import Output


@dataclass
class Run:
    aws: Aws
    out: Output


def fail(out: Output, exc: Exception, code: int) -> None:
    out.error(str(exc), **getattr(exc, "data", {}))
    raise SystemExit(code)


def translate(exc: Exception, profile: str | None = None) -> CliError | None:
    """One translation of what boto3 and our library raise into a one-line error that says what to do next
    (None for anything else, which is a bug and keeps its traceback)."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, s3errors.BadRequest):
        return BadInput(str(exc))
    if isinstance(exc, s3errors.TransferFailed):
        return OperationFailed(str(exc))
    if isinstance(exc, ClientError):
        return from_client_error(exc)
    who = f"--profile {profile}" if profile else "your profile"
    if isinstance(exc, (SSOTokenLoadError, UnauthorizedSSOTokenError, TokenRetrievalError)):
        login = f"aws sso login --profile {profile}" if profile else "aws sso login"
        return BadInput(f"the AWS SSO session of {who} is not logged in or has expired: run `{login}`")
    if isinstance(exc, PartialCredentialsError):
        return BadInput(
            f"incomplete AWS credentials ({exc}): set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_SESSION_TOKEN for temporary keys), or use a profile"
        )
    if isinstance(exc, NoCredentialsError):
        return BadInput("no AWS credentials: set AWS_PROFILE or pass --profile (or aws sso login)")
    if isinstance(exc, NoRegionError):
        return BadInput("no AWS region: pass --region REGION or set AWS_REGION")
    if isinstance(exc, EndpointConnectionError):
        return OperationFailed(f"cannot reach AWS: {exc}")
    if isinstance(exc, WaiterError):
        return OperationFailed(f"gave up waiting: {exc}")
    if isinstance(exc, BotoCoreError):
        return OperationFailed(f"AWS client error: {exc}")
    return None


def command(group: click.Group | None, name: str | None = None, aws: bool = True, **kwargs) -> Callable:
    """Make `f(run, **options)` a command with --json (and --region/--profile when `aws`), on `group`, or a
    top-level command (group None) that its module lists in COMMANDS for scipioncloud/cli.py."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, as_json: bool, region: str | None = None, profile: str | None = None, **kw):
            run = Run(Aws(region, profile), Output(as_json))
            try:
                return f(run, *args, **kw)
            except KeyboardInterrupt:
                fail(run.out, Interrupted("interrupted"), Interrupted.exit_code)
            except Exception as exc:
                converted = translate(exc, profile)
                if converted is None:
                    raise
                fail(run.out, converted, converted.exit_code)

        wrapper = click.option(
            "--json", "as_json", is_flag=True, help="Print one JSON document (for scripts)."
        )(wrapper)
        if aws:
            wrapper = click.option(
                "--profile", help="AWS profile (default: AWS_PROFILE or the default chain)."
            )(wrapper)
            wrapper = click.option("--region", help="AWS region (default: AWS_REGION / the profile's).")(
                wrapper
            )
        return (group.command if group is not None else click.command)(name, **kwargs)(wrapper)

    return decorate


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d)?\s*$")


def parse_minutes(text: str | None, option: str = "--auto-stop") -> float | None:
    """'60m', '90', '2h', '1d' -> minutes."""
    if text is None:
        return None
    match = DURATION.match(text)
    if not match:
        raise BadInput(f"{option} {text!r}: give a duration such as 60m, 2h or 1d")
    value, unit = float(match[1]), match[2] or "m"
    return value * {"m": 1, "min": 1, "h": 60, "d": 1440}[unit]
