"""Our AMIs: find them by tag across regions, copy them to other regions, share them, prune old ones."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from scipioncloud.aws import Aws, tags_dict, waiter_config
from scipioncloud.errors import BadInput, OperationFailed, from_client_error
from scipioncloud.tags import TAG_GPU, TAG_IMAGE


def summarize(image: dict, region: str) -> dict[str, Any]:
    tags = tags_dict(image.get("Tags"))
    return {
        "region": region,
        "image_id": image["ImageId"],
        "name": image.get("Name"),
        "image": tags.get(TAG_IMAGE),
        "created": image.get("CreationDate"),
        "state": image.get("State"),
        "public": bool(image.get("Public")),
        "needs_gpu": tags.get(TAG_GPU) == "required",
        "snapshots": [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if "Ebs" in m and m["Ebs"].get("SnapshotId")
        ],
    }


def ours_in_region(aws: Aws, region: str, image: str | None = None) -> list[dict]:
    """Our AMIs (owned by this account, tagged TAG_IMAGE[=image]) in one region, newest first."""
    return _ours(aws.ec2(region), region, image)


def _ours(ec2, region: str, image: str | None) -> list[dict]:
    tag_filter = (
        {"Name": f"tag:{TAG_IMAGE}", "Values": [image]}
        if image
        else {"Name": "tag-key", "Values": [TAG_IMAGE]}
    )
    pages = ec2.get_paginator("describe_images").paginate(Owners=["self"], Filters=[tag_filter])
    found = [summarize(i, region) for page in pages for i in page["Images"]]
    return sorted(found, key=lambda i: i["created"] or "", reverse=True)


def enabled_regions(aws: Aws) -> list[str]:
    return sorted(r["RegionName"] for r in aws.ec2().describe_regions()["Regions"])


def list_images(aws: Aws, regions: list[str] | None = None, image: str | None = None) -> list[dict]:
    regions = regions or enabled_regions(aws)
    # Clients are made here, in one thread: boto3 sessions are not thread-safe, clients are.
    clients = {region: aws.ec2(region) for region in regions}
    with ThreadPoolExecutor(max_workers=8) as pool:
        per_region = list(pool.map(lambda r: _ours(clients[r], r, image), regions))
    return [i for found in per_region for i in found]


def resolve(aws: Aws, name_or_id: str, region: str | None = None, owners: tuple[str, ...] = ()) -> dict:
    """An AMI id, or an image name: the newest of our AMIs with that TAG_IMAGE, else with that AMI Name,
    else the newest image shared with this account (by a facility: `owners`, or any account that granted
    us launch permission) whose AMI name starts with NAME- (the bake's naming; tags do not cross accounts)."""
    region = region or aws.region_name
    ec2 = aws.ec2(region)
    if name_or_id.startswith("ami-"):
        try:
            images = ec2.describe_images(ImageIds=[name_or_id])["Images"]
        except ClientError as exc:
            raise from_client_error(exc, f"image {name_or_id} in {region}") from None
        if not images:
            raise BadInput(f"image {name_or_id} does not exist in {region}")
        return (
            summarize(images[0], region)
            | {"root_device": images[0].get("RootDeviceName")}
            | {"raw": images[0]}
        )
    found = ours_in_region(aws, region, name_or_id)
    if not found:
        by_name = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name_or_id]}])[
            "Images"
        ]
        found = _newest(by_name, region)
    if not found:
        found = shared_with_us(ec2, region, name_or_id, owners)
        if found:
            # Tags (scipioncloud:gpu) stay in the facility's account: assume the image needs a GPU,
            # which --allow-no-gpu can waive.
            image = resolve(aws, found[0]["image_id"], region)
            return image | {"needs_gpu": True, "image": image["image"] or name_or_id, "shared": True}
    if not found:
        raise BadInput(
            f"unknown image {name_or_id!r} in {region}: no AMI of ours is tagged {TAG_IMAGE}={name_or_id}"
            f" and none shared with this account is named {name_or_id}-*; see `scipioncloud images list`, "
            "bake one with `make ami`, or name the facility's account with --image-owner"
        )
    return resolve(aws, found[0]["image_id"], region)


def _newest(images: list[dict], region: str) -> list[dict]:
    return sorted((summarize(i, region) for i in images), key=lambda i: i["created"] or "", reverse=True)


def shared_with_us(ec2, region: str, name: str, owners: tuple[str, ...] = ()) -> list[dict]:
    """Images named NAME-* that another account shared with this one, newest first."""
    name_filter = [{"Name": "name", "Values": [f"{name}-*"]}, {"Name": "state", "Values": ["available"]}]
    if owners:
        found = ec2.describe_images(Owners=list(owners), Filters=name_filter)["Images"]
    else:
        found = ec2.describe_images(ExecutableUsers=["self"], Filters=name_filter)["Images"]
    return _newest(found, region)


def copy(aws: Aws, name_or_id: str, to_regions: list[str], wait: bool = True, on_progress=None) -> list[dict]:
    """Copy an AMI to other regions with its tags, all regions at once; with `wait`, until each copy is
    available, calling on_progress(percent, task=region) as the copies' snapshots progress."""
    source = resolve(aws, name_or_id)
    src_region = aws.region_name
    tags = [t for t in source["raw"].get("Tags", []) if not t["Key"].startswith("aws:")]
    clients = {region: aws.ec2(region) for region in to_regions}  # made here: sessions are not thread-safe
    started = {}
    for region, ec2 in clients.items():  # CopyImage only starts a copy: cheap, one region after another
        try:
            new_id = ec2.copy_image(
                SourceRegion=src_region,
                SourceImageId=source["image_id"],
                Name=source["name"],
                Description=f"copy of {source['image_id']} from {src_region}",
            )["ImageId"]
            tags_here = [*tags, {"Key": "scipioncloud:source", "Value": f"{src_region}/{source['image_id']}"}]
            ec2.create_tags(Resources=[new_id], Tags=tags_here)
        except ClientError as exc:
            raise from_client_error(exc, f"copy to {region}") from None
        started[region] = new_id
    if wait:
        report = on_progress or (lambda _percent, task=None: None)
        with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
            waits = [
                pool.submit(wait_for_copy, clients[region], image_id, lambda p, r=region: report(p, task=r))
                for region, image_id in started.items()
            ]
            for done in waits:
                done.result()
    return [{"region": r, "image_id": i, "source": source["image_id"]} for r, i in started.items()]


def wait_for_copy(ec2, image_id: str, on_progress, max_wait_s: float = 3600 * 3) -> None:
    """Poll the copy (DescribeImages, as the image_available waiter does); its progress is that of the
    snapshots it is made of (DescribeSnapshots Progress), since AMIs report none themselves."""
    config = waiter_config(max_wait_s)
    for _ in range(config["MaxAttempts"]):
        try:
            image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        except ClientError as exc:
            raise from_client_error(exc, f"copy {image_id}") from None
        if image.get("State") == "available":
            on_progress(100.0)
            return
        if image.get("State") in ("failed", "error", "invalid", "deregistered"):
            reason = image.get("StateReason", {}).get("Message", "no reason given")
            raise OperationFailed(f"copy {image_id} {image['State']}: {reason}")
        snapshot_ids = [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        ]
        if snapshot_ids:
            found = ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]
            values = [float(s.get("Progress", "0%").rstrip("%") or 0) for s in found]
            on_progress(sum(values) / len(values))
        time.sleep(config["Delay"])
    raise OperationFailed(f"copy {image_id} not available after {max_wait_s / 3600:g} h")


def share(aws: Aws, name_or_id: str, public: bool = False, accounts: tuple[str, ...] = ()) -> dict:
    """Grant launch permission to everyone (--public) or to accounts; their snapshots follow for accounts
    so copies in those accounts work."""
    if not public and not accounts:
        raise BadInput("say whom to share with: --public or --account ID (repeatable)")
    for account in accounts:
        if not (account.isdigit() and len(account) == 12):
            raise BadInput(f"--account {account!r}: an AWS account id is 12 digits")
    image = resolve(aws, name_or_id)
    ec2 = aws.ec2()
    add = ([{"Group": "all"}] if public else []) + [{"UserId": a} for a in accounts]
    try:
        ec2.modify_image_attribute(ImageId=image["image_id"], LaunchPermission={"Add": add})
        for snapshot in image["snapshots"]:
            if accounts:
                ec2.modify_snapshot_attribute(
                    SnapshotId=snapshot,
                    Attribute="createVolumePermission",
                    OperationType="add",
                    UserIds=list(accounts),
                )
    except ClientError as exc:
        hint = (
            " (public sharing is blocked by the account's 'block public access for AMIs' setting: "
            "`aws ec2 disable-image-block-public-access`)"
            if public
            else ""
        )
        raise OperationFailed(f"{from_client_error(exc, 'share ' + image['image_id'])}{hint}") from None
    perms = ec2.describe_image_attribute(ImageId=image["image_id"], Attribute="launchPermission")
    return {
        "image_id": image["image_id"],
        "region": image["region"],
        "launch_permissions": perms["LaunchPermissions"],
    }


def prune(
    aws: Aws, keep: int, image: str | None = None, regions: list[str] | None = None, dry_run: bool = False
) -> list[dict]:
    """Per region and image name, keep the newest `keep` AMIs; deregister the rest and delete their
    snapshots (a deregistered AMI's snapshots keep costing money otherwise)."""
    if keep < 1:
        raise BadInput("--keep must be at least 1 (prune never removes every image)")
    regions = regions or [aws.region_name]
    removed = []
    for region in regions:
        groups: dict[str, list[dict]] = {}
        for found in ours_in_region(aws, region, image):
            groups.setdefault(found["image"], []).append(found)
        ec2 = aws.ec2(region)
        for old in (i for group in groups.values() for i in group[keep:]):
            if not dry_run:
                try:
                    ec2.deregister_image(ImageId=old["image_id"])
                    for snapshot in old["snapshots"]:
                        ec2.delete_snapshot(SnapshotId=snapshot)
                except ClientError as exc:
                    raise from_client_error(exc, f"prune {old['image_id']} in {region}") from None
            removed.append(old | {"dry_run": dry_run})
    return removed
