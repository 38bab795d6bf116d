"""EBS data volumes: create (in the instance's zone), attach, detach, snapshot, delete, and the snapshots
themselves. The EBS rules (types, sizes, performance) live here; formatting and mounting happen on the
instance, through its agent (see agent_client.py)."""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from scipioncloud import lookup
from scipioncloud.aws import Aws, tags_dict, waiter_config
from scipioncloud.errors import BadInput, OperationFailed, from_client_error
from scipioncloud.lookup import volume as resolve
from scipioncloud.tags import TAG_MANAGED

# Valid sizes, IOPS and throughput per type, as EC2's CreateVolume documents them (botocore's ec2 service
# model; tests/cli/test_ebs_limits.py reads that text and fails when AWS moves a bound).
SIZE_GB = {
    "gp3": (1, 65536),
    "gp2": (1, 16384),
    "io1": (4, 16384),
    "io2": (4, 65536),
    "st1": (125, 16384),
    "sc1": (125, 16384),
}
TYPES = tuple(SIZE_GB)
GP3_IOPS = (3000, 80000)
GP3_THROUGHPUT = (125, 2000)  # MiB/s
# Device names EC2 accepts for data volumes; the kernel shows them as /dev/nvme*n1 or /dev/xvd*.
DEVICES = [f"/dev/sd{c}" for c in "fghijklmnop"]


def check_performance(volume_type: str, iops: int | None, throughput: int | None) -> None:
    if volume_type not in TYPES:
        raise BadInput(f"unknown volume type {volume_type!r}; one of {', '.join(TYPES)}")
    if throughput is not None and volume_type != "gp3":
        raise BadInput("--throughput applies to gp3 volumes only")
    if volume_type == "gp3":
        if iops is not None and not GP3_IOPS[0] <= iops <= GP3_IOPS[1]:
            raise BadInput(f"gp3 --iops must be between {GP3_IOPS[0]} and {GP3_IOPS[1]}")
        if throughput is not None and not GP3_THROUGHPUT[0] <= throughput <= GP3_THROUGHPUT[1]:
            raise BadInput(
                f"gp3 --throughput must be between {GP3_THROUGHPUT[0]} and {GP3_THROUGHPUT[1]} MiB/s"
            )
    elif volume_type in ("io1", "io2") and iops is None:
        raise BadInput(f"{volume_type} volumes need --iops")
    elif iops is not None and volume_type not in ("io1", "io2"):
        raise BadInput(f"--iops does not apply to {volume_type} volumes")


def check_size(volume_type: str, size_gb: int | None, option: str = "--size") -> None:
    if size_gb is None:
        return
    low, high = SIZE_GB[volume_type]
    if not low <= size_gb <= high:
        raise BadInput(f"{option} {size_gb}: a {volume_type} volume holds {low} to {high:,} GiB")


def check_zone(aws: Aws, zone: str) -> None:
    zones = [z["ZoneName"] for z in aws.ec2().describe_availability_zones()["AvailabilityZones"]]
    if zone not in zones:
        raise BadInput(f"unknown zone {zone!r} in {aws.region_name}; one of {', '.join(zones)}")


def create(
    aws: Aws,
    *,
    size_gb: int | None,
    volume_type: str = "gp3",
    iops: int | None = None,
    throughput: int | None = None,
    snapshot_id: str | None = None,
    zone: str | None = None,
    instance: str | None = None,
    name: str | None = None,
    init_rate: int | None = None,
) -> dict[str, Any]:
    """Create a volume in `zone`, or in the zone of `instance` (a volume attaches only within its zone).
    Every input is checked before anything is created. From a snapshot, `init_rate` MiB/s asks EBS for a
    provisioned volume initialization rate (100-300)."""
    check_performance(volume_type, iops, throughput)
    if size_gb is None and snapshot_id is None:
        raise BadInput("give --size GB (or --snapshot ID to take the size from the snapshot)")
    check_size(volume_type, size_gb)
    if instance and zone:
        raise BadInput("give --instance (its zone is used) or --zone, not both")
    if init_rate and not snapshot_id:
        raise BadInput("--init-rate applies only to a volume made from a snapshot (--snapshot)")
    ec2 = aws.ec2()
    init_params = initialization_rate(ec2, init_rate) if init_rate else {}  # no call: botocore's model
    if snapshot_id:
        snap = lookup.snapshot(aws, snapshot_id)
        if size_gb is not None and size_gb < snap["VolumeSize"]:
            raise BadInput(f"--size {size_gb} is smaller than {snapshot_id} ({snap['VolumeSize']} GiB)")
    if instance:
        zone = lookup.instance(aws, instance)["Placement"]["AvailabilityZone"]
    elif zone is not None:
        check_zone(aws, zone)
    else:
        zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    tags = [{"Key": TAG_MANAGED, "Value": "true"}] + ([{"Key": "Name", "Value": name}] if name else [])
    params: dict[str, Any] = {
        "AvailabilityZone": zone,
        "VolumeType": volume_type,
        "TagSpecifications": [{"ResourceType": "volume", "Tags": tags}],
    }
    if size_gb is not None:
        params["Size"] = size_gb
    if iops is not None:
        params["Iops"] = iops
    if throughput is not None:
        params["Throughput"] = throughput
    if snapshot_id:
        params["SnapshotId"] = snapshot_id
        params.update(init_params)
    try:
        volume = ec2.create_volume(**params)
        ec2.get_waiter("volume_available").wait(
            VolumeIds=[volume["VolumeId"]], WaiterConfig=waiter_config(600)
        )
    except ClientError as exc:
        raise from_client_error(exc, "create volume") from None
    return summarize(resolve(aws, volume["VolumeId"]))


INIT_RATE_RANGE = (100, 300)  # MiB/s, botocore's CreateVolume model: "Valid range: 100 - 300 MiB/s"


def initialization_rate(ec2, rate: int) -> dict[str, int]:
    """{"VolumeInitializationRate": rate} when this botocore's CreateVolume knows the parameter (2025 on)."""
    low, high = INIT_RATE_RANGE
    if not low <= rate <= high:
        raise BadInput(f"--init-rate must be {low}-{high} MiB/s (or 0 for EBS's default lazy loading)")
    members = ec2.meta.service_model.operation_model("CreateVolume").input_shape.members
    if "VolumeInitializationRate" not in members:
        raise BadInput(
            "this boto3/botocore is too old for --init-rate (VolumeInitializationRate); upgrade boto3"
        )
    return {"VolumeInitializationRate": rate}


def summarize(volume: dict) -> dict[str, Any]:
    """The fields we show; .get() throughout, so an odd volume (no zone, no type) never breaks a listing."""
    attachments = volume.get("Attachments") or []
    return {
        "volume_id": volume.get("VolumeId"),
        "name": tags_dict(volume.get("Tags")).get("Name"),
        "size_gb": volume.get("Size"),
        "type": volume.get("VolumeType"),
        "iops": volume.get("Iops"),
        "throughput": volume.get("Throughput"),
        "zone": volume.get("AvailabilityZone"),
        "state": volume.get("State"),
        "instance_id": attachments[0].get("InstanceId") if attachments else None,
        "device": attachments[0].get("Device") if attachments else None,
        "snapshot_id": volume.get("SnapshotId") or None,
    }


def list_volumes(aws: Aws) -> list[dict]:
    pages = (
        aws.ec2()
        .get_paginator("describe_volumes")
        .paginate(Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}])
    )
    return [summarize(v) for page in pages for v in page["Volumes"]]


def free_device(instance: dict) -> str:
    used = {m["DeviceName"] for m in instance.get("BlockDeviceMappings", [])}
    for device in DEVICES:
        if device not in used and device.replace("/dev/sd", "/dev/xvd") not in used:
            return device
    raise BadInput("no free device name left on this instance; detach a volume first")


def attach(aws: Aws, volume_id: str, instance: str, device: str | None = None) -> dict:
    volume = resolve(aws, volume_id)
    target = lookup.instance(aws, instance)
    if volume["State"] != "available":
        raise BadInput(f"volume {volume_id} is {volume['State']}, not available; detach it first")
    if volume["AvailabilityZone"] != target["Placement"]["AvailabilityZone"]:
        raise BadInput(
            f"volume {volume_id} is in {volume['AvailabilityZone']} but {target['InstanceId']} runs in "
            f"{target['Placement']['AvailabilityZone']}; snapshot it and create a volume from the snapshot "
            "in that zone"
        )
    device = device or free_device(target)
    ec2 = aws.ec2()
    try:
        ec2.attach_volume(VolumeId=volume_id, InstanceId=target["InstanceId"], Device=device)
        ec2.get_waiter("volume_in_use").wait(VolumeIds=[volume_id], WaiterConfig=waiter_config(300))
    except ClientError as exc:
        raise from_client_error(exc, f"attach {volume_id}") from None
    return summarize(resolve(aws, volume_id))


def detach(aws: Aws, volume_id: str, force: bool = False) -> dict:
    volume = resolve(aws, volume_id)
    attachments = volume.get("Attachments") or []
    if not attachments:
        raise BadInput(f"volume {volume_id} is not attached to any instance")
    ec2 = aws.ec2()
    try:
        # InstanceId named explicitly: AWS allows leaving it out, moto does not.
        ec2.detach_volume(VolumeId=volume_id, InstanceId=attachments[0]["InstanceId"], Force=force)
        ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=waiter_config(300))
    except ClientError as exc:
        raise from_client_error(exc, f"detach {volume_id}") from None
    return summarize(resolve(aws, volume_id))


def snapshot(
    aws: Aws, volume_id: str, description: str | None = None, *, wait: bool = True, on_progress=None
) -> dict:
    """Snapshot a volume; with `wait`, poll until it completes, calling on_progress(percent) as EBS
    reports it (a 1 TB first snapshot takes hours: the operator sees it move)."""
    volume = resolve(aws, volume_id)
    ec2 = aws.ec2()
    tags = [t for t in volume.get("Tags", []) if not t["Key"].startswith("aws:")]
    try:
        snap = ec2.create_snapshot(
            VolumeId=volume_id,
            Description=description or f"ScipionCloud snapshot of {volume_id}",
            TagSpecifications=[
                {"ResourceType": "snapshot", "Tags": tags or [{"Key": TAG_MANAGED, "Value": "true"}]}
            ],
        )
        found = wait_for_snapshot(ec2, snap["SnapshotId"], on_progress) if wait else snap
    except ClientError as exc:
        raise from_client_error(exc, f"snapshot {volume_id}") from None
    return {"snapshot_id": snap["SnapshotId"], "volume_id": volume_id, "state": found["State"]}


def wait_for_snapshot(ec2, snapshot_id: str, on_progress=None, max_wait_s: float = 6 * 3600) -> dict:
    """Poll DescribeSnapshots (the snapshot_completed waiter's own call) and report Progress ("42%")."""
    config = waiter_config(max_wait_s)
    for _ in range(config["MaxAttempts"]):
        found = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        if on_progress:
            on_progress(percent(found.get("Progress")))
        if found["State"] == "completed":
            return found
        if found["State"] == "error":
            raise OperationFailed(f"snapshot {snapshot_id} failed: {found.get('StateMessage', 'no reason')}")
        time.sleep(config["Delay"])
    raise OperationFailed(f"snapshot {snapshot_id} is still {found['State']} after {max_wait_s / 3600:g} h")


def percent(progress: str | None) -> float | None:
    try:
        return float((progress or "").rstrip("%"))
    except ValueError:
        return None


# --- what is billed, and deleting it --------------------------------------------------------------------


def completed_snapshots(aws: Aws, volume_id: str) -> list[dict]:
    pages = (
        aws.ec2()
        .get_paginator("describe_snapshots")
        .paginate(OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume_id]}])
    )
    return [s for page in pages for s in page["Snapshots"] if s.get("State") == "completed"]


def monthly_cost(volume: dict, per_gb_month: dict[str, float] | None) -> float | None:
    """What the volume costs a month while it exists (storage only; gp3/io IOPS above baseline extra)."""
    if not per_gb_month or volume.get("VolumeType") not in per_gb_month or volume.get("Size") is None:
        return None
    return round(volume["Size"] * per_gb_month[volume["VolumeType"]], 2)


def delete(aws: Aws, volume_id: str, *, unsnapshotted_ok: bool = False, per_gb_month=None) -> dict:
    """Delete a volume. Refuses one that is attached (detach first: data not yet written would be lost)
    and one with no completed snapshot, the only copy of its data, unless `unsnapshotted_ok`."""
    volume = resolve(aws, volume_id)
    if volume.get("Attachments") or volume["State"] != "available":
        where = ", ".join(a.get("InstanceId", "?") for a in volume.get("Attachments") or [])
        raise OperationFailed(
            f"{volume_id} is {volume['State']}{f' on {where}' if where else ''}; unmount and "
            f"`scipioncloud volumes detach {volume_id}` first"
        )
    snapshots = completed_snapshots(aws, volume_id)
    if not snapshots and not unsnapshotted_ok:
        raise OperationFailed(
            f"{volume_id} ({volume['Size']} GiB) has no snapshot: deleting it loses its data for good. "
            f"Snapshot it (`scipioncloud volumes snapshot {volume_id}`) or pass --yes"
        )
    try:
        aws.ec2().delete_volume(VolumeId=volume_id)
    except ClientError as exc:
        raise from_client_error(exc, f"delete {volume_id}") from None
    return {
        "volume_id": volume_id,
        "deleted": True,
        "size_gb": volume["Size"],
        "type": volume["VolumeType"],
        "snapshots": [s["SnapshotId"] for s in snapshots],
        "monthly_saving": monthly_cost(volume, per_gb_month),
    }


def summarize_snapshot(snapshot: dict, images_using: dict[str, str]) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot.get("SnapshotId"),
        "volume_id": snapshot.get("VolumeId"),
        "size_gb": snapshot.get("VolumeSize"),
        "state": snapshot.get("State"),
        "progress": snapshot.get("Progress"),
        "started": snapshot.get("StartTime"),
        "name": tags_dict(snapshot.get("Tags")).get("Name"),
        "description": snapshot.get("Description"),
        "image_id": images_using.get(snapshot.get("SnapshotId", "")),
    }


def _snapshots_of_images(aws: Aws) -> dict[str, str]:
    pages = aws.ec2().get_paginator("describe_images").paginate(Owners=["self"])
    return {
        m["Ebs"]["SnapshotId"]: image["ImageId"]
        for page in pages
        for image in page["Images"]
        for m in image.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    }


def list_snapshots(aws: Aws, volume_id: str | None = None) -> list[dict]:
    """This account's snapshots (newest first), each with the AMI that uses it, if any."""
    filters = [{"Name": "volume-id", "Values": [volume_id]}] if volume_id else []
    pages = aws.ec2().get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=filters)
    using = _snapshots_of_images(aws)
    found = [summarize_snapshot(s, using) for page in pages for s in page["Snapshots"]]
    return sorted(found, key=lambda s: str(s["started"] or ""), reverse=True)


def delete_snapshot(
    aws: Aws, snapshot_id: str, *, only_copy_ok: bool = False, per_gb_month: float | None = None
) -> dict:
    """Delete a snapshot. Refuses one an AMI of ours uses (prune or deregister the image instead) and the
    only copy of a volume's data: its volume is gone and no other completed snapshot of it exists."""
    snap = lookup.snapshot(aws, snapshot_id)
    image = _snapshots_of_images(aws).get(snapshot_id)
    if image:
        raise OperationFailed(
            f"{snapshot_id} belongs to image {image}; remove the image with `scipioncloud images prune` "
            "(it deletes the image's snapshots too)"
        )
    volume_id = snap.get("VolumeId")
    volume_exists = True
    try:
        lookup.volume(aws, volume_id or "")
    except BadInput:
        volume_exists = False
    others = [s for s in completed_snapshots(aws, volume_id or "") if s["SnapshotId"] != snapshot_id]
    if not volume_exists and not others and not only_copy_ok:
        raise OperationFailed(
            f"{snapshot_id} is the only copy of {volume_id or 'its volume'}'s data "
            f"({snap['VolumeSize']} GiB; the volume no longer exists). Restore it first "
            f"(`scipioncloud volumes create --snapshot {snapshot_id}`) or pass --yes to lose it"
        )
    try:
        aws.ec2().delete_snapshot(SnapshotId=snapshot_id)
    except ClientError as exc:
        raise from_client_error(exc, f"delete {snapshot_id}") from None
    saving = None if per_gb_month is None else round(snap["VolumeSize"] * per_gb_month, 2)
    return {
        "snapshot_id": snapshot_id,
        "deleted": True,
        "volume_id": volume_id,
        "size_gb": snap["VolumeSize"],
        # Snapshots bill the blocks they hold, at most the volume's size: the saving is an upper bound.
        "monthly_saving_up_to": saving,
    }
