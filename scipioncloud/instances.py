"""Instances: launch a workstation the way the original guide's console wizard did, then list, stop,
start, resize and terminate it, and read its desktop line."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from scipioncloud import console, images, instance_types, userdata, volumes
from scipioncloud.aws import Aws, tags_dict, waiter_config
from scipioncloud.console import Desktop
from scipioncloud.errors import BadInput, OperationFailed, from_client_error
from scipioncloud.lookup import instance as resolve  # callers name instances by id or Name
from scipioncloud.tags import TAG_GPU, TAG_IMAGE, TAG_INSTANCE, TAG_MANAGED

DESKTOP_PORTS = (22, 443)  # SSH and the browser desktop, nothing else
DATA_DEVICE = "/dev/sdf"
SSH_USER = "ubuntu"


@dataclass
class LaunchRequest:
    image: str
    instance_type: str
    key_name: str
    cidr: str
    name: str | None = None
    disk_gb: int = 100
    data_volume_gb: int = 0
    data_volume_type: str = "gp3"
    subnet_id: str | None = None
    auto_stop_min: float | None = None
    auto_stop_grace_min: float = 10
    extra_tags: dict[str, str] = field(default_factory=dict)
    allow_no_gpu: bool = False


def default_vpc(ec2) -> str:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise BadInput("this region has no default VPC; pass --subnet SUBNET_ID")
    return vpcs[0]["VpcId"]


def create_security_group(ec2, vpc_id: str, cidr: str, name: str) -> str:
    """A group that opens SSH and HTTPS to `cidr` only (egress stays AWS's default: all out)."""
    group_name = f"scipioncloud-{name}-{uuid.uuid4().hex[:8]}"
    group_id = ec2.create_security_group(
        GroupName=group_name,
        Description=f"ScipionCloud {name}: SSH and desktop from {cidr}",
        VpcId=vpc_id,
        TagSpecifications=[
            {"ResourceType": "security-group", "Tags": [{"Key": TAG_MANAGED, "Value": "true"}]}
        ],
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "IpRanges": [
                    {"CidrIp": cidr, "Description": f"ScipionCloud {'ssh' if port == 22 else 'desktop'}"}
                ],
            }
            for port in DESKTOP_PORTS
        ],
    )
    return group_id


def auto_stop_settings(minutes: float | None, grace_min: float) -> dict:
    if minutes is None:
        return {}
    if minutes <= 0:
        raise BadInput("--auto-stop must be a positive duration such as 60m or 2h")
    return {"idle": {"action": "poweroff", "window_min": minutes, "grace_min": grace_min}}


def launch(aws: Aws, request: LaunchRequest) -> dict[str, Any]:
    """Check everything that can be checked, then run the instance; returns once it is running."""
    ec2 = aws.ec2()
    image = images.resolve(aws, request.image)
    instance_types.check(ec2, request.instance_type, image["needs_gpu"] and not request.allow_no_gpu)
    volumes.check_performance(request.data_volume_type, None, None)
    try:
        ec2.describe_key_pairs(KeyNames=[request.key_name])
    except ClientError as exc:
        raise BadInput(
            f"unknown key pair {request.key_name!r} in {aws.region_name}; create one with "
            f"`aws ec2 create-key-pair --key-name NAME` ({exc.response['Error']['Code']})"
        ) from None
    if request.disk_gb < 8:
        raise BadInput("--disk must be at least 8 GB")
    settings = auto_stop_settings(request.auto_stop_min, request.auto_stop_grace_min)
    user_data = userdata.render(settings) if settings else None
    name = request.name or f"{image['image'] or 'scipioncloud'}-{uuid.uuid4().hex[:6]}"

    if request.subnet_id:
        subnet = ec2.describe_subnets(SubnetIds=[request.subnet_id])["Subnets"][0]
        vpc_id = subnet["VpcId"]
    else:
        vpc_id = default_vpc(ec2)
    group_id = create_security_group(ec2, vpc_id, request.cidr, name)

    tags = {"Name": name, TAG_MANAGED: "true", **({TAG_IMAGE: image["image"]} if image["image"] else {})}
    tags.update(request.extra_tags)
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    devices = [
        {
            "DeviceName": image.get("root_device") or "/dev/sda1",
            "Ebs": {"VolumeSize": request.disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True},
        }
    ]
    if request.data_volume_gb:
        devices.append(
            {
                "DeviceName": DATA_DEVICE,
                # Data outlives the instance: terminating never deletes it (the guide's advice).
                "Ebs": {
                    "VolumeSize": request.data_volume_gb,
                    "VolumeType": request.data_volume_type,
                    "DeleteOnTermination": False,
                },
            }
        )
    params: dict[str, Any] = {
        "ImageId": image["image_id"],
        "InstanceType": request.instance_type,
        "KeyName": request.key_name,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceInitiatedShutdownBehavior": "stop",
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 1,
        },
        "BlockDeviceMappings": devices,
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tag_list},
            {"ResourceType": "volume", "Tags": tag_list},
        ],
        "SecurityGroupIds": [group_id],
    }
    if request.subnet_id:
        params["SubnetId"] = request.subnet_id
    if user_data:
        params["UserData"] = user_data
    try:
        instance = ec2.run_instances(**params)["Instances"][0]
    except ClientError as exc:
        ec2.delete_security_group(GroupId=group_id)  # nothing uses it; do not leave it behind
        raise from_client_error(exc, "launch") from None
    instance_id = instance["InstanceId"]
    ec2.create_tags(Resources=[group_id], Tags=[{"Key": TAG_INSTANCE, "Value": instance_id}])
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=waiter_config(900))
    running = resolve(aws, instance_id)
    return {
        "instance_id": instance_id,
        "name": name,
        "image_id": image["image_id"],
        "type": request.instance_type,
        "state": running["State"]["Name"],
        "public_ip": running.get("PublicIpAddress"),
        "security_group": group_id,
        "cidr": request.cidr,
        "auto_stop_min": request.auto_stop_min,
        "ssh": ssh_command(running, request.key_name),
    }


def ssh_command(instance: dict, key_name: str | None = None) -> str | None:
    address = instance.get("PublicIpAddress") or instance.get("PublicDnsName")
    if not address:
        return None
    key = key_name or instance.get("KeyName") or "KEY"
    return f"ssh -i {key}.pem {SSH_USER}@{address}"


def desktop(aws: Aws, name_or_id: str) -> Desktop | None:
    instance = resolve(aws, name_or_id)
    return console.parse(console.read_console(aws.ec2(), instance["InstanceId"]))


def _uptime_h(instance: dict, now: datetime) -> float:
    if instance["State"]["Name"] != "running":
        return 0.0
    return max(0.0, (now - instance["LaunchTime"]).total_seconds() / 3600)


def list_instances(aws: Aws, all_instances: bool = False, hourly_price=None) -> list[dict]:
    """Our instances (tag TAG_MANAGED), with uptime since the last start and its on-demand cost."""
    filters = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    if not all_instances:
        filters.append({"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]})
    pages = aws.ec2().get_paginator("describe_instances").paginate(Filters=filters)
    now = datetime.now(timezone.utc)
    rows = []
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                uptime = _uptime_h(instance, now)
                price = hourly_price(instance["InstanceType"]) if hourly_price else None
                rows.append(
                    {
                        "instance_id": instance["InstanceId"],
                        "name": tags_dict(instance.get("Tags")).get("Name"),
                        "state": instance["State"]["Name"],
                        "type": instance["InstanceType"],
                        "public_ip": instance.get("PublicIpAddress"),
                        "launched": instance["LaunchTime"],
                        "uptime_h": round(uptime, 2),
                        "price_per_h": price,
                        "cost_so_far": None if price is None else round(uptime * price, 2),
                    }
                )
    return rows


def _wait(ec2, waiter: str, instance_id: str) -> None:
    ec2.get_waiter(waiter).wait(InstanceIds=[instance_id], WaiterConfig=waiter_config(900))


def stop(aws: Aws, name_or_id: str, *, wait: bool = True, any_instance: bool = False) -> dict:
    instance = resolve(aws, name_or_id, ours_only=not any_instance)
    ec2 = aws.ec2()
    ec2.stop_instances(InstanceIds=[instance["InstanceId"]])
    if wait:
        _wait(ec2, "instance_stopped", instance["InstanceId"])
    return {"instance_id": instance["InstanceId"], "state": "stopped" if wait else "stopping"}


def start(aws: Aws, name_or_id: str, *, wait: bool = True) -> dict:
    instance = resolve(aws, name_or_id)
    ec2 = aws.ec2()
    ec2.start_instances(InstanceIds=[instance["InstanceId"]])
    if wait:
        _wait(ec2, "instance_running", instance["InstanceId"])
    current = resolve(aws, instance["InstanceId"])
    return {
        "instance_id": instance["InstanceId"],
        "state": current["State"]["Name"],
        "public_ip": current.get("PublicIpAddress"),
    }


def resize(
    aws: Aws,
    name_or_id: str,
    new_type: str,
    *,
    on_step=None,
    allow_no_gpu: bool = False,
    any_instance: bool = False,
) -> dict:
    """Stop, change the type, start again (as the guide's console steps); a stopped one stays stopped.
    The public address changes on the way: the result carries the new one."""
    instance = resolve(aws, name_or_id, ours_only=not any_instance)
    ec2 = aws.ec2()
    image_tags = {}
    try:
        found = ec2.describe_images(ImageIds=[instance["ImageId"]])["Images"]
        image_tags = tags_dict(found[0].get("Tags")) if found else {}
    except ClientError:
        pass  # the AMI may be gone; the GPU check then only needs the type to exist
    instance_types.check(ec2, new_type, image_tags.get(TAG_GPU) == "required" and not allow_no_gpu)
    instance_id = instance["InstanceId"]
    old_type = instance["InstanceType"]
    was_running = instance["State"]["Name"] in ("pending", "running")
    step = on_step or (lambda _msg: None)
    if instance["State"]["Name"] not in ("stopped",):
        step(f"stopping {instance_id}")
        ec2.stop_instances(InstanceIds=[instance_id])
        _wait(ec2, "instance_stopped", instance_id)
    step(f"changing type {old_type} -> {new_type}")
    try:
        ec2.modify_instance_attribute(InstanceId=instance_id, InstanceType={"Value": new_type})
    except ClientError as exc:
        raise OperationFailed(
            f"{from_client_error(exc, 'resize')}; the instance is stopped, type {old_type}"
        ) from None
    if was_running:
        step(f"starting {instance_id}")
        ec2.start_instances(InstanceIds=[instance_id])
        _wait(ec2, "instance_running", instance_id)
    current = resolve(aws, instance_id)
    return {
        "instance_id": instance_id,
        "old_type": old_type,
        "type": current["InstanceType"],
        "state": current["State"]["Name"],
        "public_ip": current.get("PublicIpAddress"),
        "ssh": ssh_command(current),
    }


def volumes_at_risk(aws: Aws, instance: dict, per_gb_month: dict[str, float] | None = None) -> list[dict]:
    """Each attached volume and what terminating does to it: deleted (DeleteOnTermination) or kept (and
    still billed), whether it is the system disk (made again from the image) and whether a completed
    snapshot of it exists. A deleted data volume without a snapshot is `lost`."""
    rows = []
    for mapping in instance.get("BlockDeviceMappings", []):
        ebs = mapping.get("Ebs")
        if not ebs:
            continue
        volume_id = ebs["VolumeId"]
        volume = volumes.resolve(aws, volume_id)
        newest = max((s["StartTime"] for s in volumes.completed_snapshots(aws, volume_id)), default=None)
        deleted = bool(ebs.get("DeleteOnTermination"))
        system = mapping["DeviceName"] == instance.get("RootDeviceName")
        rows.append(
            {
                "volume_id": volume_id,
                "device": mapping["DeviceName"],
                "size_gb": volume["Size"],
                "type": volume["VolumeType"],
                "system_disk": system,
                "deleted_on_terminate": deleted,
                "last_snapshot": newest,
                "monthly_cost": volumes.monthly_cost(volume, per_gb_month),
                "lost": deleted and not system and newest is None,
            }
        )
    return rows


def terminate(
    aws: Aws, name_or_id: str, *, yes: bool = False, any_instance: bool = False, per_gb_month=None
) -> dict:
    """Terminate, but refuse while a data volume that would be deleted has no snapshot (unless yes). The
    system disk is made again from the image; data volumes kept go on being billed, and the result says
    which and for how much."""
    instance = resolve(aws, name_or_id, ours_only=not any_instance)
    instance_id = instance["InstanceId"]
    attached = volumes_at_risk(aws, instance, per_gb_month)
    lost = [v for v in attached if v["lost"]]
    if lost and not yes:
        what = "; ".join(f"{v['volume_id']} ({v['device']}, {v['size_gb']} GB, no snapshot)" for v in lost)
        raise OperationFailed(
            f"terminating {instance_id} would delete data volume(s) {what}. Snapshot first "
            f"(`scipioncloud volumes snapshot VOLUME`) or pass --yes to lose them"
        )
    ec2 = aws.ec2()
    ec2.terminate_instances(InstanceIds=[instance_id])
    _wait(ec2, "instance_terminated", instance_id)
    groups = ec2.describe_security_groups(Filters=[{"Name": f"tag:{TAG_INSTANCE}", "Values": [instance_id]}])
    removed_groups = []
    for group in groups["SecurityGroups"]:
        try:
            ec2.delete_security_group(GroupId=group["GroupId"])
            removed_groups.append(group["GroupId"])
        except ClientError:
            pass  # still referenced (e.g. another instance uses it); harmless to keep
    kept = [v for v in attached if not v["deleted_on_terminate"]]
    costs = [v["monthly_cost"] for v in kept]
    return {
        "instance_id": instance_id,
        "state": "terminated",
        "deleted_volumes": [v["volume_id"] for v in attached if v["deleted_on_terminate"]],
        "kept_volumes": [v["volume_id"] for v in kept],
        "kept_and_billed": [
            {k: v[k] for k in ("volume_id", "device", "size_gb", "type", "monthly_cost")} for v in kept
        ],
        "kept_monthly_cost": None if None in costs else round(sum(costs), 2),
        "lost_without_snapshot": [v["volume_id"] for v in lost],
        "deleted_security_groups": removed_groups,
    }
