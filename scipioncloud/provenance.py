"""What actually went into a baked image, as the image itself recorded it (`scipioncloud-agent version-info`
on the build instance, downloaded by Packer, as amazon-eks-ami's version-info.json): which components the
image's roles must have installed, the AMI tags that carry the exact versions, and tagging the AMI (and
its copies) in every region once the build has finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from agent.version_info import flat
from scipioncloud.aws import Aws

TAG_PREFIX = "scipioncloud:installed:"
TAG_VALUE_MAX = 256  # EC2's limit for a tag value
# role (in images/<image>.yml's scipioncloud_roles) -> the components it installs (agent/version_info.py)
ROLE_COMPONENTS = {
    "nvidia_driver": ["nvidia_driver"],
    "cuda": ["cuda"],
    "scipion": ["scipion"],
    "agent": ["scipioncloud_agent"],
}


def expected_components(ansible_vars: Path) -> list[str]:
    """The components the image's roles install, so the build fails when one of them is missing."""
    values = yaml.safe_load(ansible_vars.read_text()) or {}
    roles = values.get("scipioncloud_roles", [])
    expected = [c for role in roles for c in ROLE_COMPONENTS.get(role, [])]
    if "desktop" in roles and values.get("desktop_vnc_server", "turbovnc") == "turbovnc":
        expected += ["turbovnc"]
    if "scipion" in roles and values.get("scipion_env_manager", "venv") != "venv":
        expected.remove("scipion")  # a conda environment is not where version-info looks
    return expected


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def tags(info: dict[str, Any]) -> list[dict[str, str]]:
    """One tag per component: scipioncloud:installed:<component> = its exact version(s)."""
    out = []
    for name, value in flat(info).items():
        if len(value) > TAG_VALUE_MAX:
            value = value[: TAG_VALUE_MAX - 3] + "..."  # the full list stays in the bake record
        out.append({"Key": TAG_PREFIX + name, "Value": value})
    return out


def tag_amis(aws: Aws, amis: dict[str, str], tag_list: list[dict[str, str]]) -> None:
    """Tag each region's AMI and its snapshots (the copies carry no tags of their own)."""
    for region, ami in amis.items():
        ec2 = aws.ec2(region)
        image = ec2.describe_images(ImageIds=[ami])["Images"][0]
        snapshots = [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if "Ebs" in m]
        ec2.create_tags(Resources=[ami, *snapshots], Tags=tag_list)
