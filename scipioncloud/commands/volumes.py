"""`scipioncloud volumes ...`"""

from __future__ import annotations

import click

from agent.config import DEFAULT_MOUNT_FORMAT, MOUNT_FORMATS
from scipioncloud import agent_client, costs, tunnel
from scipioncloud import volumes as lib
from scipioncloud.commands.common import command
from scipioncloud.commands.instances import _ssh_target, ssh_options

COLUMNS = [
    ("volume_id", "volume"),
    ("name", "name"),
    ("size_gb", "GB"),
    ("type", "type"),
    ("zone", "zone"),
    ("state", "state"),
    ("instance_id", "instance"),
    ("device", "device"),
]


@click.group()
def volumes() -> None:
    """EBS data volumes: create, attach, detach, snapshot, mount."""


@command(volumes, "list")
def list_(run):
    """Our volumes (tag scipioncloud:managed)."""
    run.out.table(lib.list_volumes(run.aws), COLUMNS)


@command(volumes, "create")
@click.option("--size", "size_gb", type=int, help="Size in GB (default: the snapshot's).")
@click.option("--type", "volume_type", default="gp3", show_default=True)
@click.option("--iops", type=int, help="gp3: 3000-16000; io1/io2: required.")
@click.option("--throughput", type=int, help="gp3 only: 125-1000 MiB/s.")
@click.option("--snapshot", "snapshot_id", help="Restore from this snapshot.")
@click.option("--instance", help="Create in this instance's zone (to attach it there).")
@click.option("--zone", help="Availability zone (default: the region's first).")
@click.option("--name", help="Name tag.")
@click.option(
    "--init-rate",
    type=int,
    default=None,
    help="From a snapshot: EBS provisioned initialization rate, 100-300 MiB/s (default 300; 0 = lazy "
    "loading, no extra charge). Billed per GiB initialized.",
)
def create(run, size_gb, volume_type, iops, throughput, snapshot_id, instance, zone, name, init_rate):
    """Create a volume."""
    if init_rate is None:
        init_rate = 300 if snapshot_id else 0
    result = lib.create(
        run.aws,
        size_gb=size_gb,
        volume_type=volume_type,
        iops=iops,
        throughput=throughput,
        snapshot_id=snapshot_id,
        zone=zone,
        instance=instance,
        name=name,
        init_rate=init_rate,
    )
    run.out.table([result], COLUMNS, data=result)


@command(volumes, "attach")
@click.argument("volume")
@click.argument("instance")
@click.option("--device", help="Device name (default: the first free of /dev/sdf../dev/sdp).")
def attach(run, volume, instance, device):
    """Attach VOLUME to INSTANCE."""
    result = lib.attach(run.aws, volume, instance, device)
    run.out.table([result], COLUMNS, data=result)


@command(volumes, "detach")
@click.argument("volume")
@click.option("--force", is_flag=True, help="Force (data not yet written may be lost; unmount first).")
def detach(run, volume, force):
    """Detach VOLUME from its instance."""
    result = lib.detach(run.aws, volume, force)
    run.out.table([result], COLUMNS, data=result)


@command(volumes, "snapshot")
@click.argument("volume")
@click.option("--description")
@click.option("--no-wait", is_flag=True, help="Return once the snapshot is started.")
def snapshot(run, volume, description, no_wait):
    """Snapshot VOLUME (what `terminate` wants to see before it deletes a data volume)."""
    with run.out.progress(f"snapshot of {volume}") as progress:
        result = lib.snapshot(run.aws, volume, description, wait=not no_wait, on_progress=progress)
    run.out.emit(result, text=f"{result['snapshot_id']} of {result['volume_id']}: {result['state']}")


def _region_prices(run):
    return costs.load_table().regions.get(run.aws.region_name)


@command(volumes, "delete")
@click.argument("volume")
@click.option("--yes", is_flag=True, help="Delete even though no snapshot of it exists (its data is lost).")
def delete(run, volume, yes):
    """Delete VOLUME: refuses one that is attached, and one with no snapshot (the only copy of its data)
    unless --yes. Prints what it saves a month."""
    prices = _region_prices(run)
    result = lib.delete(
        run.aws, volume, unsnapshotted_ok=yes, per_gb_month=prices.ebs_per_gb_month if prices else None
    )
    saving = result["monthly_saving"]
    text = f"{volume} deleted ({result['size_gb']} GB {result['type']})"
    if saving is not None:
        text += f"; saves ${saving:.2f}/month"
    if result["snapshots"]:
        text += f"; its data stays in {', '.join(result['snapshots'])}"
    run.out.emit(result, text=text)


SNAPSHOT_COLUMNS = [
    ("snapshot_id", "snapshot"),
    ("volume_id", "volume"),
    ("size_gb", "GB"),
    ("state", "state"),
    ("progress", "progress"),
    ("started", "started"),
    ("image_id", "image"),
    ("name", "name"),
]


@click.group()
def snapshots() -> None:
    """EBS snapshots of this account: list and delete."""


@command(snapshots, "list")
@click.option("--volume", help="Only the snapshots of this volume.")
def list_snapshots(run, volume):
    """This account's snapshots, newest first, with the image that uses each, if any."""
    run.out.table(lib.list_snapshots(run.aws, volume), SNAPSHOT_COLUMNS)


@command(snapshots, "delete")
@click.argument("snapshot")
@click.option("--yes", is_flag=True, help="Delete even the only copy of a deleted volume's data.")
def delete_snapshot(run, snapshot, yes):
    """Delete SNAPSHOT: refuses one an image uses, and the only copy of a deleted volume's data unless
    --yes. Prints what it saves a month (at most: a snapshot bills only the blocks it holds)."""
    prices = _region_prices(run)
    result = lib.delete_snapshot(
        run.aws, snapshot, only_copy_ok=yes, per_gb_month=prices.snapshot_per_gb_month if prices else None
    )
    saving = result["monthly_saving_up_to"]
    text = f"{snapshot} deleted"
    if saving is not None:
        text += f"; saves up to ${saving:.2f}/month"
    run.out.emit(result, text=text)


@command(volumes, "mount")
@click.argument("instance")
@click.argument("volume")
@click.argument("mountpoint")
@click.option("--fstype", default="ext4", show_default=True)
@click.option(
    "--format",
    "format_",
    type=click.Choice(MOUNT_FORMATS),
    default=DEFAULT_MOUNT_FORMAT,  # the agent's own default
    show_default=True,
    help="if-blank formats a proven-blank volume; never mounts the filesystem a volume already holds.",
)
@ssh_options
def mount(run, instance, volume, mountpoint, fstype, format_, key, user, ssh_host, ssh_port, ssh_opts):
    """Ask INSTANCE's agent to mount VOLUME at MOUNTPOINT (e.g. /data); a new volume needs --format if-blank.

    A volume that already holds data (restored from a snapshot, or mounted before) is mounted with
    --format never (the default); if-blank refuses it rather than risk it."""
    lib.resolve(run.aws, volume)
    target = _ssh_target(run, instance, key, user, ssh_host, ssh_port, ssh_opts)
    token = tunnel.read_token(target)
    with tunnel.open_tunnel(target) as url:
        client = agent_client.AgentClient(url, token, timeout_s=600)
        result = client.mount(volume, mountpoint, fstype, format_)
    run.out.emit(result, text=f"{volume} mounted at {mountpoint}")


COMMANDS = [volumes, snapshots]
