"""EBS data volumes: create (in the instance's zone), attach, detach, snapshot. Formatting and mounting
happen on the instance, through its agent (see agent_client.py)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from scipioncloud import instances  # module import: instances.py imports this module too
from scipioncloud.aws import Aws, tags_dict, waiter_config
from scipioncloud.errors import BadInput, from_client_error
from scipioncloud.tags import TAG_MANAGED

TYPES = ("gp3", "gp2", "io1", "io2", "st1", "sc1")
GP3_IOPS = (3000, 16000)
GP3_THROUGHPUT = (125, 1000)  # MiB/s
# Device names EC2 accepts for data volumes; the kernel shows them as /dev/nvme*n1 or /dev/xvd*.
DEVICES = [f"/dev/sd{c}" for c in "fghijklmnop"]


def resolve(aws: Aws, volume_id: str) -> dict:
    if not volume_id.startswith("vol-"):
        raise BadInput(f"unknown volume {volume_id!r}: a volume id looks like vol-0123456789abcdef0")
    try:
        return aws.ec2().describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    except ClientError as exc:
        raise from_client_error(exc, f"volume {volume_id}") from None


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


def create(
    aws: Aws,
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
    From a snapshot, `init_rate` MiB/s asks EBS for a provisioned volume initialization rate (100-300)."""
    check_performance(volume_type, iops, throughput)
    if size_gb is None and snapshot_id is None:
        raise BadInput("give --size GB (or --snapshot ID to take the size from the snapshot)")
    if size_gb is not None and size_gb < 1:
        raise BadInput("--size must be at least 1 GB")
    ec2 = aws.ec2()
    if instance:
        zone = instances.resolve(aws, instance)["Placement"]["AvailabilityZone"]
    if zone is None:
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
        if init_rate:
            params.update(initialization_rate(ec2, init_rate))
    elif init_rate:
        raise BadInput("--init-rate applies only to a volume made from a snapshot (--snapshot)")
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
    attachments = volume.get("Attachments") or []
    return {
        "volume_id": volume["VolumeId"],
        "name": tags_dict(volume.get("Tags")).get("Name"),
        "size_gb": volume["Size"],
        "type": volume["VolumeType"],
        "iops": volume.get("Iops"),
        "throughput": volume.get("Throughput"),
        "zone": volume["AvailabilityZone"],
        "state": volume["State"],
        "instance_id": attachments[0]["InstanceId"] if attachments else None,
        "device": attachments[0]["Device"] if attachments else None,
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
    target = instances.resolve(aws, instance)
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


def snapshot(aws: Aws, volume_id: str, description: str | None = None, wait: bool = True) -> dict:
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
        if wait:
            ec2.get_waiter("snapshot_completed").wait(
                SnapshotIds=[snap["SnapshotId"]], WaiterConfig=waiter_config(6 * 3600)
            )
        state = ec2.describe_snapshots(SnapshotIds=[snap["SnapshotId"]])["Snapshots"][0]["State"]
    except ClientError as exc:
        raise from_client_error(exc, f"snapshot {volume_id}") from None
    return {"snapshot_id": snap["SnapshotId"], "volume_id": volume_id, "state": state}
