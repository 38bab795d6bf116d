"""Instances: launch a workstation the way the original guide's console wizard did, then list, stop,
start, resize and terminate it, and read its desktop line."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from scipioncloud import console, images, instance_types, lookup, quotas, userdata, volumes
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
    image_owners: tuple[str, ...] = ()


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


@dataclass
class Created:
    """What a launch has made so far: what to report (and remove) when it is interrupted or fails late."""

    security_group: str | None = None
    instance_id: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v}


@dataclass
class LaunchPlan:
    """A request that passed every check, with the RunInstances parameters it will send."""

    request: LaunchRequest
    name: str
    image: dict
    vpc_id: str
    vcpus: int
    params: dict[str, Any]
    quota: dict | None = None


def check_inputs(request: LaunchRequest) -> None:
    """What can be checked without AWS: sizes, types, durations. Runs before any call."""
    volumes.check_size("gp3", request.disk_gb, "--disk")
    if request.disk_gb < 8:
        raise BadInput("--disk must be at least 8 GB (the image's system disk)")
    if request.data_volume_gb:
        volumes.check_performance(request.data_volume_type, None, None)
        volumes.check_size(request.data_volume_type, request.data_volume_gb, "--data-volume")
    elif request.data_volume_gb < 0:
        raise BadInput("--data-volume cannot be negative")
    auto_stop_settings(request.auto_stop_min, request.auto_stop_grace_min)


def prepare(aws: Aws, request: LaunchRequest) -> LaunchPlan:
    """Every check that reads AWS (image, type and its GPU, key pair, name free, network, GPU quota);
    creates nothing."""
    check_inputs(request)
    ec2 = aws.ec2()
    image = images.resolve(aws, request.image, owners=request.image_owners)
    described = instance_types.check(
        ec2, request.instance_type, image["needs_gpu"] and not request.allow_no_gpu
    )
    try:
        ec2.describe_key_pairs(KeyNames=[request.key_name])
    except ClientError as exc:
        raise BadInput(
            f"unknown key pair {request.key_name!r} in {aws.region_name}; create one with "
            f"`aws ec2 create-key-pair --key-name NAME` ({exc.response['Error']['Code']})"
        ) from None
    if request.name:
        in_use = lookup.names_in_use(aws, request.name)
        if in_use:
            raise BadInput(
                f"the name {request.name!r} is already used by {', '.join(in_use)}; pick another --name "
                "(commands find instances by name)"
            )
    name = request.name or f"{image['image'] or 'scipioncloud'}-{uuid.uuid4().hex[:6]}"
    if request.subnet_id:
        try:
            subnet = ec2.describe_subnets(SubnetIds=[request.subnet_id])["Subnets"][0]
        except ClientError as exc:
            raise from_client_error(exc, f"subnet {request.subnet_id}") from None
        vpc_id = subnet["VpcId"]
    else:
        vpc_id = default_vpc(ec2)
    vcpus = described.get("VCpuInfo", {}).get("DefaultVCpus", 0)
    quota = quotas.require(aws, request.instance_type, vcpus)
    return LaunchPlan(
        request=request,
        name=name,
        image=image,
        vpc_id=vpc_id,
        vcpus=vcpus,
        params=run_parameters(request, image, name),
        quota=quota.as_dict(),
    )


def run_parameters(request: LaunchRequest, image: dict, name: str) -> dict[str, Any]:
    settings = auto_stop_settings(request.auto_stop_min, request.auto_stop_grace_min)
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
    }
    if request.subnet_id:
        params["SubnetId"] = request.subnet_id
    if settings:
        params["UserData"] = userdata.render(settings)
    return params


def dry_run(aws: Aws, plan: LaunchPlan) -> dict[str, Any]:
    """EC2's own DryRun of the two calls a launch makes: permissions (and, on AWS, capacity limits) are
    checked and nothing is created. Returns what each call would do."""
    ec2 = aws.ec2()
    checks = {}
    calls = {
        "CreateSecurityGroup": lambda: ec2.create_security_group(
            GroupName=f"scipioncloud-{plan.name}-dryrun",
            Description="dry run",
            VpcId=plan.vpc_id,
            DryRun=True,
        ),
        "RunInstances": lambda: ec2.run_instances(**plan.params, DryRun=True),
    }
    for name, call in calls.items():
        try:
            call()
            checks[name] = "no DryRun answer (the endpoint ignored DryRun)"
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            checks[name] = "would succeed" if code == "DryRunOperation" else f"refused: {code}"
    refused = {k: v for k, v in checks.items() if v.startswith("refused")}
    result = {
        "dry_run": True,
        "name": plan.name,
        "image_id": plan.image["image_id"],
        "type": plan.request.instance_type,
        "vcpus": plan.vcpus,
        "quota": plan.quota,
        "checks": checks,
    }
    if refused:
        raise OperationFailed(
            "the dry run was refused: "
            + "; ".join(f"{k} {v}" for k, v in refused.items())
            + " (UnauthorizedOperation: your credentials lack that permission)",
            **result,
        )
    return result


def launch(aws: Aws, plan: LaunchPlan, created: Created | None = None) -> dict[str, Any]:
    """Make the security group and run the instance; returns once it is running. `created` records what
    exists as it is made, so an interrupted launch can say what to remove."""
    created = created if created is not None else Created()
    ec2 = aws.ec2()
    request = plan.request
    group_id = create_security_group(ec2, plan.vpc_id, request.cidr, plan.name)
    created.security_group = group_id
    try:
        instance = ec2.run_instances(**plan.params, SecurityGroupIds=[group_id])["Instances"][0]
    except ClientError as exc:
        ec2.delete_security_group(GroupId=group_id)  # nothing uses it; do not leave it behind
        created.security_group = None
        raise from_client_error(exc, "launch") from None
    instance_id = instance["InstanceId"]
    created.instance_id = instance_id
    ec2.create_tags(Resources=[group_id], Tags=[{"Key": TAG_INSTANCE, "Value": instance_id}])
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=waiter_config(900))
    running = resolve(aws, instance_id)
    return {
        "instance_id": instance_id,
        "name": plan.name,
        "image_id": plan.image["image_id"],
        "type": request.instance_type,
        "state": running["State"]["Name"],
        "public_ip": running.get("PublicIpAddress"),
        "security_group": group_id,
        "cidr": request.cidr,
        "auto_stop_min": request.auto_stop_min,
        "ssh": ssh_command(running, request.key_name),
    }


def leftovers(created: Created, hourly_price: float | None, disk_gb_month: float | None) -> str:
    """What an interrupted launch left behind, what it costs, and the commands that remove it."""
    if not created.instance_id and not created.security_group:
        return "interrupted before anything was created; nothing to remove"
    parts = []
    if created.instance_id:
        cost = (
            f"${hourly_price:.3f}/hour while it runs" if hourly_price is not None else "billed while it runs"
        )
        disks = f", its disks ${disk_gb_month:.2f}/month" if disk_gb_month is not None else ""
        parts.append(
            f"instance {created.instance_id} exists ({cost}{disks}). Keep it: "
            f"`scipioncloud desktop {created.instance_id}`; remove it: "
            f"`scipioncloud terminate {created.instance_id} --yes`"
        )
    elif created.security_group:
        parts.append(
            f"security group {created.security_group} exists (free); remove it with "
            f"`aws ec2 delete-security-group --group-id {created.security_group}`"
        )
    return "interrupted: " + "; ".join(parts)


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
