"""`scipioncloud-agent`: serve the API, or do one job (pre-warm, mount) without the server."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from agent import __version__
from agent.config import DEFAULT_MOUNT_FORMAT, MOUNT_FORMATS, ConfigError, load
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
@click.option(
    "--all-blocks",
    "read_all",
    is_flag=True,
    help="Read every block, not only those the filesystem uses (ext4, xfs; the default).",
)
@click.option("--rate", "rate_mb_s", type=float, help="Limit the read rate (MB/s).")
@click.option("--json", "as_json", is_flag=True, help="Print the final job as JSON, no progress bar.")
@click.option("--include-loop", is_flag=True, help="Also accept loop devices (tests, benchmarks).")
def prewarm(
    device: str,
    config_path: Path | None,
    force: bool,
    read_all: bool,
    rate_mb_s: float | None,
    as_json: bool,
    include_loop: bool,
) -> None:
    """Read DEVICE once (EBS volume id or device name), resuming from its checkpoint: the blocks its
    filesystem uses, or every block with --all-blocks (or for a filesystem the agent cannot map)."""
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
        job = manager.start_job(blockdev.find(storage, device), force=force, read_all=read_all)
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
    "--format",
    "format_",
    type=click.Choice(MOUNT_FORMATS),
    default=DEFAULT_MOUNT_FORMAT,
    show_default=True,
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


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Agent TOML config file.")
def token(config_path: Path | None) -> None:
    """Make the agent token (mode 0600) where the config says, unless it exists; never prints it.

    The one program that makes the token: the first-boot hook runs it, and the agent itself on its first
    start (the same function)."""
    from agent.token import ensure_token

    path = Path(load_or_exit(config_path).server.token_file)
    existed = path.exists()
    try:
        ensure_token(path)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"agent token {'kept' if existed else 'made'}: {path}")


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Agent TOML config file.")
@click.option(
    "--file",
    "user_data_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Apply this saved user data instead of asking the instance metadata service.",
)
@click.option(
    "--imds-url",
    envvar="SCIPIONCLOUD_IMDS_URL",
    help="Instance metadata service address [default: the config's host.imds_url].",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="On EC2, wait this many seconds (retrying) for the metadata service, then fail: at boot the "
    "network may come up late. Off EC2 it is asked once.",
)
def userdata(
    config_path: Path | None, user_data_file: Path | None, imds_url: str | None, wait_s: float
) -> None:
    """Apply the agent settings of `scipioncloud launch` (EC2 user data) to the config file.

    User data of another kind (#cloud-config) or none at all changes nothing; off EC2 neither. On EC2 with
    --wait, a metadata service that never answers is an error (exit status 1): the launch settings are
    never lost silently, and the first-boot unit tries again at the next boot."""
    from agent import imds
    from agent import userdata as launch
    from agent.config import DEFAULT_PATH

    path = config_path or DEFAULT_PATH
    if user_data_file is not None:
        text = user_data_file.read_text()
    else:
        config = load_or_exit(config_path)
        try:
            client = imds.ImdsClient(imds_url or config.host.imds_url, timeout_s=2)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if wait_s > 0 and imds.on_ec2():
            try:
                raw = imds.wait_for(lambda c: c.user_data(), client, wait_s)
            except imds.ImdsUnavailable as exc:
                raise click.ClickException(
                    f"agent-userdata: {exc}; the launch settings are NOT applied"
                    " (first boot fails and tries again at the next boot)"
                ) from None
            click.echo(f"agent-userdata: instance metadata service reachable at {client.base_url}")
        else:
            try:
                raw = client.user_data()
            except imds.ImdsUnavailable as exc:
                click.echo(f"agent-userdata: no instance metadata service ({exc}); nothing to apply")
                return
        if raw is None:
            click.echo("agent-userdata: the instance has no user data; nothing to apply")
            return
        text = raw.decode(errors="replace")
    try:
        changed = launch.apply(text, path)
    except (OSError, launch.UserDataError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{path}: {'user data applied' if changed else 'user data is not ours; nothing to do'}")


@main.command("version-info")
@click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON here.")
@click.option(
    "--expect",
    multiple=True,
    help="A component that must be installed (nvidia_driver, cuda, turbovnc, virtualgl, scipion, ...).",
)
def version_info(root: Path, out: Path | None, expect: tuple[str, ...]) -> None:
    """Record what is installed (Debian packages, Python environments, the components' exact versions)."""
    import json

    from agent import version_info as vi

    try:
        info = vi.collect(root)
        vi.check_expected(info, list(expect))
    except (OSError, vi.VersionInfoError) as exc:
        raise click.ClickException(f"version-info: {exc}") from None
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    for name, version in vi.flat(info).items():
        click.echo(f"{name}: {version}")


@main.command("desktop-firstboot")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False, path_type=Path))
def desktop_firstboot(config_path: Path | None) -> None:
    """Make the desktop's per-instance secrets that are missing (the desktop role's unit, every boot)."""
    from agent.desktop import firstboot
    from agent.desktop.password import PasswordError

    try:
        firstboot.run(config_path or firstboot.DEFAULT_CONFIG)
    except (OSError, KeyError, ValueError, PasswordError, firstboot.FirstbootError) as exc:
        raise click.ClickException(f"desktop-firstboot: {exc}") from None


@main.command("hosts-conf")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/opt/scipion/config/hosts.conf"),
    show_default=True,
    help="Scipion's hosts.conf.",
)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=0,
    show_default=True,
    help="Seconds to keep trying while Slurm does not answer (the head node may still be booting).",
)
def hosts_conf(out_path: Path, wait_s: float) -> None:
    """Write Scipion's hosts.conf from the cluster's live partitions (`scontrol show partition|node`).

    Run at boot on a desktop joined to a Slurm cluster (scipioncloud-hosts-conf.service); rewrites the file
    only when the partitions changed; exits non-zero when Slurm does not answer."""
    from agent.scipion_hosts import live

    try:
        written = live.write_from_slurm(out_path, wait_s=wait_s)
    except (live.SlurmUnreachable, ValueError) as exc:
        raise click.ClickException(f"hosts-conf: {exc}") from None
    names = ", ".join(q.name for q in written.queues)
    click.echo(f"{out_path}: {'written' if written.changed else 'unchanged'} (queues {names})")
