"""What every command shares: --region/--profile/--json, and one way to end with a one-line error
(exit 2 for bad input, 1 for a failed operation)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import click
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    WaiterError,
)

from scipioncloud.aws import Aws
from scipioncloud.errors import BadInput, OperationFailed, from_client_error
from scipioncloud.output import Output


@dataclass
class Run:
    aws: Aws
    out: Output


def fail(out: Output, exc: Exception, code: int) -> None:
    out.error(str(exc))
    raise SystemExit(code)


def command(group: click.Group, name: str | None = None, aws: bool = True, **kwargs) -> Callable:
    """Register `f(run, **options)` on `group` with --json (and --region/--profile when `aws`)."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, as_json: bool, region: str | None = None, profile: str | None = None, **kw):
            run = Run(Aws(region, profile), Output(as_json))
            try:
                return f(run, *args, **kw)
            except BadInput as exc:
                fail(run.out, exc, 2)
            except OperationFailed as exc:
                fail(run.out, exc, 1)
            except ClientError as exc:
                converted = from_client_error(exc)
                fail(run.out, converted, converted.exit_code)
            except NoCredentialsError:
                fail(
                    run.out,
                    BadInput("no AWS credentials: set AWS_PROFILE or pass --profile (or aws sso login)"),
                    2,
                )
            except NoRegionError:
                fail(run.out, BadInput("no AWS region: pass --region REGION or set AWS_REGION"), 2)
            except EndpointConnectionError as exc:
                fail(run.out, OperationFailed(f"cannot reach AWS: {exc}"), 1)
            except WaiterError as exc:
                fail(run.out, OperationFailed(f"gave up waiting: {exc}"), 1)

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
        return group.command(name, **kwargs)(wrapper)

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
