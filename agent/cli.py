"""`scipioncloud-agent`: serve the API, or do one job (pre-warm, mount) without the server."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from agent import __version__
from agent.config import ConfigError, load
from agent.token import TokenError

log = logging.getLogger("agent")


class Commands(click.Group):
    """No traceback ever reaches the terminal: an unexpected error is one line (the traceback goes to the
    log at debug level, shown with -v)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            from agent.shell import CommandError

            log.debug("%s failed", ctx.invoked_subcommand, exc_info=True)
            if isinstance(exc, CommandError):
                raise click.ClickException(str(exc)) from None
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(cls=Commands)
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """The ScipionCloud on-instance agent."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def load_or_exit(path: Path | None):
    try:
        return load(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Agent TOML config file.")
def serve(config_path: Path | None) -> None:
    """Serve the HTTP API (bind address and token file from the config)."""
    from agent.server import serve as run

    try:
        run(load_or_exit(config_path))
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None


def _storage_for(config_path: Path | None, include_loop: bool):
    import dataclasses

    config = load_or_exit(config_path)
    storage = config.storage
    if include_loop:
        storage = dataclasses.replace(storage, include_loop=True)
    return storage


def _api_error_exit(exc) -> None:
    details = {k: v for k, v in exc.details.items() if k != "signature"}
    extra = f" {details}" if details else ""
    raise click.ClickException(f"{exc.message}{extra}")


@main.command()
@click.argument("device")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Agent TOML config file.")
@click.option("--force", is_flag=True, help="Read again a volume already pre-warmed.")
@click.option("--rate", "rate_mb_s", type=float, help="Limit the read rate (MB/s).")
@click.option("--json", "as_json", is_flag=True, help="Print the final job as JSON, no progress bar.")
@click.option("--include-loop", is_flag=True, help="Also accept loop devices (tests, benchmarks).")
def prewarm(
    device: str,
    config_path: Path | None,
    force: bool,
    rate_mb_s: float | None,
    as_json: bool,
    include_loop: bool,
) -> None:
    """Read every block of DEVICE once (EBS volume id or device name), resuming from its checkpoint."""
    import dataclasses
    import json
    import resource
    import signal
    import time

    from agent.errors import ApiError
    from agent.volumes import blockdev
    from agent.volumes.prewarm import ACTIVE, PrewarmManager

    storage = _storage_for(config_path, include_loop)
    if rate_mb_s is not None:
        storage = dataclasses.replace(storage, prewarm_rate_mb_s=rate_mb_s)
    manager = PrewarmManager(storage)
    try:
        job = manager.start_job(blockdev.find(storage, device), force=force)
    except ApiError as exc:
        _api_error_exit(exc)
    # Ctrl-C or SIGTERM: stop fio and keep the checkpoint, so the next run resumes.
    signal.signal(signal.SIGTERM, lambda *_: (job.shutdown.set(), job.interrupt.set()))
    try:
        if as_json:
            while job.state in ACTIVE:
                time.sleep(0.2)
        else:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns) as bar:
                task = bar.add_task(job.device, total=job.size, completed=job.done)
                while job.state in ACTIVE:
                    bar.update(task, completed=job.done)
                    time.sleep(0.2)
                bar.update(task, completed=job.done)
    except KeyboardInterrupt:
        job.shutdown.set()
        job.interrupt.set()
    if job.thread is not None:
        job.thread.join()
    result = job.to_json()
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_s"] = {
        "agent": round(own.ru_utime + own.ru_stime, 3),
        "fio": round(children.ru_utime + children.ru_stime, 3),
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"{result['device']}: {result['state']} ({result['bytes_done']} of {result['bytes_total']} bytes)"
            + (f" - {result['reason']}" if result["reason"] else "")
        )
    if job.state not in ("done", "skipped"):
        raise SystemExit(1)


@main.command()
@click.argument("device")
@click.argument("mountpoint")
@click.option(
    "--format", "format_", type=click.Choice(["never", "if-blank"]), default="never", show_default=True
)
@click.option("--fstype", type=click.Choice(["ext4", "xfs"]), default="ext4", show_default=True)
@click.option("--label", help="Filesystem label when formatting.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Agent TOML config file.")
@click.option("--include-loop", is_flag=True, help="Also accept loop devices (tests).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def mount(
    device: str,
    mountpoint: str,
    format_: str,
    fstype: str,
    label: str | None,
    config_path: Path | None,
    include_loop: bool,
    as_json: bool,
) -> None:
    """Mount DEVICE at MOUNTPOINT and add its fstab line (formatting only a blank device, on request)."""
    import json

    from agent.errors import ApiError
    from agent.volumes import mounts

    storage = _storage_for(config_path, include_loop)
    owner = load_or_exit(config_path).desktop.user
    try:
        result = mounts.mount(
            storage, device, mountpoint, fstype=fstype, format=format_, label=label, owner=owner
        )
    except ApiError as exc:
        _api_error_exit(exc)
    if as_json:
        click.echo(json.dumps(result))
    else:
        done = "formatted as {fstype} and mounted" if result["formatted"] else "mounted"
        click.echo(
            f"{result['device']} {done.format(fstype=result['fstype'])} at {result['mountpoint']}"
            f" (UUID={result['uuid']}, fstab {'updated' if result['fstab_changed'] else 'unchanged'})"
        )
