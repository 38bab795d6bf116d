"""Check an instance type before asking for it: emulators accept any string, AWS fails late and vaguely."""

from __future__ import annotations

from botocore.exceptions import ClientError

from scipioncloud.errors import BadInput, from_client_error


def describe(ec2, instance_type: str) -> dict:
    """The type's description in the client's region; BadInput when the region does not offer it."""
    region = ec2.meta.region_name
    try:
        found = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("InvalidInstanceType", "InvalidParameterValue"):
            found = []
        else:
            raise from_client_error(exc, f"instance type {instance_type}") from None
    if not found:
        raise BadInput(
            f"unknown instance type {instance_type!r} in {region}; "
            f"list GPU types with `aws ec2 describe-instance-types --filters Name=instance-type,Values=g*`"
        )
    return found[0]


def gpus(description: dict) -> list[dict]:
    return description.get("GpuInfo", {}).get("Gpus", [])


def check(ec2, instance_type: str, needs_gpu: bool) -> dict:
    """Validate the type; when the image needs a GPU, the type must have an NVIDIA one."""
    description = describe(ec2, instance_type)
    if needs_gpu and not any(g.get("Manufacturer") == "NVIDIA" for g in gpus(description)):
        raise BadInput(
            f"instance type {instance_type} has no NVIDIA GPU and this image needs one; "
            "pick a GPU type such as g4dn.xlarge, g5.xlarge or g6.xlarge (or pass --allow-no-gpu for "
            "CPU-only steps, as the original guide suggests for picking or classification)"
        )
    return description
