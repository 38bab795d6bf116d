"""Provenance: the image's own record of what was installed becomes the AMI's tags (moto server, real
boto3) and the list of components each image's roles must have installed."""

from __future__ import annotations

import json

from scipioncloud import provenance
from scipioncloud.aws import Aws
from tests.cli.conftest import make_ami
from tests.support.paths import REPO

RECORD = {
    "components": {
        "nvidia_driver": {"package": "nvidia-driver-580-server", "version": "580.95.05-0ubuntu0.22.04.2"},
        "cuda": {"12.6": "12.6.3-1"},
        "turbovnc": "3.1.2",
        "scipion": {"scipion-pyworkflow": "3.11.7", "scipion-em": "3.11.1", "scipion-app": "3.8.3"},
        "scipion_plugins": {"scipion-em-relion": "5.0.2", "scipion-em-xmipp": "29.0.1"},
        "scipioncloud_agent": "0.1.0",
    },
    "packages": {},
    "python": {},
}


def test_each_image_expects_what_its_roles_install():
    desktop = provenance.expected_components(REPO / "images/scipion-desktop.yml")
    compute = provenance.expected_components(REPO / "images/scipion-compute.yml")
    assert set(desktop) == {"nvidia_driver", "cuda", "turbovnc", "scipion", "scipioncloud_agent"}
    assert set(compute) == {"nvidia_driver", "cuda", "scipion", "scipioncloud_agent"}


def test_installed_versions_become_tags_on_every_ami_and_snapshot(aws_env, ec2, tmp_path):
    path = tmp_path / "version-info.json"
    path.write_text(json.dumps(RECORD))
    ami = make_ami(ec2, "scipion-desktop-20261130")
    aws = Aws(region=ec2.meta.region_name)
    provenance.tag_amis(aws, {ec2.meta.region_name: ami}, provenance.tags(provenance.load(path)))
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["scipioncloud:installed:nvidia-driver"] == "580.95.05-0ubuntu0.22.04.2"
    assert tags["scipioncloud:installed:cuda"] == "12.6=12.6.3-1"
    assert tags["scipioncloud:installed:turbovnc"] == "3.1.2"
    assert tags["scipioncloud:installed:scipion-plugins"] == "relion=5.0.2 xmipp=29.0.1"
    assert tags["scipioncloud:installed:scipioncloud-agent"] == "0.1.0"
    snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snap_tags = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0].get("Tags", [])
    assert {"Key": "scipioncloud:installed:turbovnc", "Value": "3.1.2"} in snap_tags


def test_a_tag_value_never_passes_ec2s_limit():
    many = {f"scipion-em-plugin{i}": "1.2.3" for i in range(40)}
    record = {**RECORD, "components": {"scipion_plugins": many}}
    (tag,) = provenance.tags(record)
    assert len(tag["Value"]) == provenance.TAG_VALUE_MAX and tag["Value"].endswith("...")
