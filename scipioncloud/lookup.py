"""Finding what the operator named: an instance by id or Name tag, a volume or snapshot by id. One module
for name lookups, so the EBS rules (volumes.py) and the instance lifecycle (instances.py) need not import
each other."""

from __future__ import annotations

from botocore.exceptions import ClientError

from scipioncloud.aws import Aws, tags_dict
from scipioncloud.errors import BadInput, from_client_error
from scipioncloud.tags import TAG_MANAGED

LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def is_ours(resource: dict) -> bool:
    """Made by scipioncloud (tag TAG_MANAGED=true)."""
    return tags_dict(resource.get("Tags")).get(TAG_MANAGED) == "true"


def instance(aws: Aws, name_or_id: str, *, ours_only: bool = False) -> dict:
    """An instance by id (i-...) or by its Name tag; BadInput when there is none, or several by name.
    With `ours_only`, an instance this tool did not launch is refused: commands that change or end an
    instance act only on ours unless the operator says otherwise (--any-instance)."""
    ec2 = aws.ec2()
    try:
        if name_or_id.startswith("i-"):
            reservations = ec2.describe_instances(InstanceIds=[name_or_id])["Reservations"]
        else:
            reservations = ec2.describe_instances(
                Filters=[
                    {"Name": "tag:Name", "Values": [name_or_id]},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            )["Reservations"]
    except ClientError as exc:
        raise from_client_error(exc, f"instance {name_or_id}") from None
    found = [i for r in reservations for i in r["Instances"]]
    if not found:
        raise BadInput(f"unknown instance {name_or_id!r} in {aws.region_name}; see `scipioncloud instances`")
    if len(found) > 1:
        ids = ", ".join(i["InstanceId"] for i in found)
        raise BadInput(f"several instances are named {name_or_id!r} ({ids}); name one by its id")
    if ours_only and not is_ours(found[0]):
        raise BadInput(
            f"{found[0]['InstanceId']} ({name_or_id}) was not launched by scipioncloud (no tag "
            f"{TAG_MANAGED}=true); pass --any-instance to act on it anyway"
        )
    return found[0]


def names_in_use(aws: Aws, name: str) -> list[str]:
    """Ids of live instances that already carry Name=`name` (any owner tool: a Name is how users call it)."""
    reservations = aws.ec2().describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": [name]},
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ]
    )["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


def volume(aws: Aws, volume_id: str) -> dict:
    if not volume_id.startswith("vol-"):
        raise BadInput(f"unknown volume {volume_id!r}: a volume id looks like vol-0123456789abcdef0")
    try:
        return aws.ec2().describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    except ClientError as exc:
        raise from_client_error(exc, f"volume {volume_id}") from None


def snapshot(aws: Aws, snapshot_id: str) -> dict:
    if not snapshot_id.startswith("snap-"):
        raise BadInput(f"unknown snapshot {snapshot_id!r}: a snapshot id looks like snap-0123456789abcdef0")
    try:
        return aws.ec2().describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    except ClientError as exc:
        raise from_client_error(exc, f"snapshot {snapshot_id}") from None
