"""launch: every input checked before AWS is asked for anything, names that stay unique, EC2's DryRun, the
GPU vCPU quota, and a Ctrl-C or a time-out that says what exists and how to remove it."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber

from scipioncloud import console, costs, quotas
from scipioncloud.aws import Aws
from scipioncloud.errors import OperationFailed
from tests.cli.conftest import CIDR, launch

pytestmark = pytest.mark.integration

BASE = ["launch", "--image", "scipion-desktop", "--key", "lab", "--cidr", CIDR]
MUTATING = {"CreateSecurityGroup", "RunInstances", "CreateTags", "AuthorizeSecurityGroupIngress"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--disk", "0"], "--disk 0: a gp3 volume holds 1 to 65,536 GiB"),
        (["--data-volume", "100", "--data-volume-type", "st1"], "--data-volume 100: a st1 volume holds 125"),
        (["--data-volume", "10", "--data-volume-type", "gp9"], "unknown volume type 'gp9'"),
        (["--auto-stop", "0m"], "--auto-stop must be a positive duration"),
    ],
)
def test_bad_sizes_are_refused_before_any_aws_call(cli, calls, extra, message):
    result = cli(*BASE, *extra)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}" or message in result.stderr
    assert calls == []  # not even a DescribeImages
    assert "launching" not in result.stderr


def test_a_name_in_use_is_refused(cli, ec2, our_ami, key_pair, calls):
    first = launch(cli, "--name", "cryo-7")
    calls.clear()
    again = cli(*BASE, "--name", "cryo-7", "--no-wait")
    assert again.exit_code == 2
    assert f"the name 'cryo-7' is already used by {first['instance_id']}" in again.stderr
    assert not MUTATING & set(calls)


def test_dry_run_asks_ec2_and_creates_nothing(cli, ec2, our_ami, key_pair, calls):
    result = cli.json(*BASE, "--dry-run")
    assert result["dry_run"] is True
    assert result["checks"] == {"CreateSecurityGroup": "would succeed", "RunInstances": "would succeed"}
    assert result["vcpus"] == 4  # g4dn.xlarge, from DescribeInstanceTypes
    assert not ec2.describe_instances(Filters=[{"Name": "tag:scipioncloud:managed", "Values": ["true"]}])[
        "Reservations"
    ]
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert not [g for g in groups if g["GroupName"].startswith("scipioncloud-")]


def _stubbed_quota(aws: Aws, value: float) -> Stubber:
    """Service Quotas is not in the emulator: a botocore Stubber answers GetServiceQuota, its answer checked
    against the service model botocore ships (the real API's shape)."""
    client = aws.client("service-quotas")
    stub = Stubber(client)
    stub.add_response(
        "get_service_quota",
        {
            "Quota": {
                "ServiceCode": "ec2",
                "QuotaCode": "L-DB2E81BA",
                "QuotaName": "Running On-Demand G and VT instances",
                "Value": value,
                "Unit": "None",
                "Adjustable": True,
            }
        },
        {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"},
    )
    stub.activate()
    return stub


def test_gpu_quota_too_small_says_how_to_ask_for_more(aws_env, our_ami, key_pair):
    ec2 = boto3.client("ec2")
    base = ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType="g4dn.2xlarge")  # 8 vCPUs in use
    aws = Aws("eu-west-1")
    _stubbed_quota(aws, 8)
    with pytest.raises(OperationFailed) as refused:
        quotas.require(aws, "g4dn.xlarge", 4)
    text = str(refused.value)
    assert "allows 8 (8 in use)" in text
    assert "--quota-code L-DB2E81BA --desired-value 12 --region eu-west-1" in text
    assert refused.value.data["quota"]["enough"] is False

    roomy = Aws("eu-west-1")
    _stubbed_quota(roomy, 64)
    assert quotas.require(roomy, "g4dn.xlarge", 4).enough is True


def test_an_unreadable_quota_is_reported_not_fatal(aws_env):
    # The emulator, like an account without servicequotas:GetServiceQuota, cannot answer for ec2.
    found = quotas.check(Aws("eu-west-1"), "g5.xlarge", 4)
    assert found.enough is None and "could not read quota L-DB2E81BA" in found.note
    assert quotas.check(Aws("eu-west-1"), "m5.large", 2).family is None


def test_ctrl_c_during_launch_says_what_exists_and_what_it_costs(cli, ec2, our_ami, key_pair, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt  # the operator presses Ctrl-C while the first boot runs

    monkeypatch.setattr(console, "wait_for_desktop", interrupted)
    result = cli(*BASE, "--name", "cryo-9", "--json")
    assert result.exit_code == 130
    report = json.loads(result.stdout)
    instance_id = report["instance_id"]
    assert ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"][
        "Name"
    ] in ("pending", "running")
    price = costs.load_table().regions["eu-west-1"].instances_per_hour["g4dn.xlarge"]
    assert f"instance {instance_id} exists (${price:.3f}/hour while it runs" in report["error"]
    assert f"scipioncloud terminate {instance_id} --yes" in report["error"]
    assert report["security_group"].startswith("sg-")
    assert "Aborted!" not in result.output


def test_launch_time_out_under_json_gives_the_instance_as_a_field(cli, ec2, our_ami, key_pair, monkeypatch):
    real = console.wait_for_desktop
    monkeypatch.setattr(
        console,
        "wait_for_desktop",
        lambda read, timeout_s, **kw: real(read, timeout_s=timeout_s, interval_s=0.05),
    )
    result = cli(*BASE, "--timeout", "0.005", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["instance_id"].startswith("i-") and report["state"] == "running"
    assert "no desktop line" in report["error"]


def test_access_opens_the_ports_to_the_new_address_and_closes_the_old(cli, ec2, our_ami, key_pair):
    launched = launch(cli)
    home = "198.51.100.23/32"  # TEST-NET-2
    added = cli.json("access", launched["instance_id"], "--cidr", home)
    assert added["added"] == home and added["removed"] == []
    assert added["allowed"] == {"22": sorted([CIDR, home]), "443": sorted([CIDR, home])}
    again = cli.json("access", launched["instance_id"], "--cidr", home, "--remove-old")
    assert again["added"] is None and again["removed"] == [CIDR]
    group = ec2.describe_security_groups(GroupIds=[launched["security_group"]])["SecurityGroups"][0]
    assert sorted((p["FromPort"], r["CidrIp"]) for p in group["IpPermissions"] for r in p["IpRanges"]) == [
        (22, home),
        (443, home),
    ]
    whole = cli("access", launched["instance_id"], "--cidr", "0.0.0.0/0")
    assert whole.exit_code == 2 and "whole internet" in whole.stderr


def test_launch_finds_an_image_shared_with_the_account(cli, ec2, key_pair):
    # moto keeps each account's images apart and does not model cross-account sharing, so the "facility"
    # image is made here without our tags (as tags look from another account) and shared with us:
    # DescribeImages(ExecutableUsers=["self"]) then answers as AWS does for a facility's grant.
    base = ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
    builder = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    name = "scipion-desktop-3.1-ubuntu-24.04-20261120-101010"  # the bake's ami_name
    ami = ec2.create_image(InstanceId=builder["Instances"][0]["InstanceId"], Name=name)["ImageId"]
    account = boto3.client("sts").get_caller_identity()["Account"]
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": account}]})

    launched = cli.json(*BASE, "--no-wait")  # --image scipion-desktop: no AMI tagged so, one shared
    assert launched["image_id"] == ami
    by_owner = cli.json(*BASE, "--image-owner", account, "--no-wait", "--name", "cryo-owner")
    assert by_owner["image_id"] == ami
    cpu = cli(*BASE, "--type", "t3.micro", "--no-wait")  # shared tags are not visible: assume a GPU image
    assert cpu.exit_code == 2 and "has no NVIDIA GPU" in cpu.stderr
    missing = cli(*BASE, "--image", "scipion-compute", "--no-wait")
    assert missing.exit_code == 2 and "--image-owner" in missing.stderr
