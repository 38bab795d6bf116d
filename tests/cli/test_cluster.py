"""`scipioncloud cluster config/create/status`: instance facts from EC2 (moto), the configuration checked by
aws-parallelcluster's own schema and, through the real `pcluster` command, by its own validators against
the emulator. pcluster lives in .venv-pcluster (its pins conflict with .venv's)."""

from __future__ import annotations

import configparser
import json

import boto3
import pytest
import yaml

from scipioncloud.cluster import parallelcluster
from tests.support import cluster_venvs

# Validators that cannot pass against moto, each for a gap in the emulator, not in the configuration:
# moto's DescribeKeyPairs has no KeyType; its RunInstances dry run with a launch template asks for "ebs".
MOTO_GAPS = ("KeyPairValidator", "HeadNodeLaunchTemplateValidator", "ComputeResourceLaunchTemplateValidator")


@pytest.fixture(scope="module")
def pcluster():
    return cluster_venvs.pcluster_bin()


@pytest.fixture
def account(aws_env, pcluster, monkeypatch):
    """A VPC and subnet as ParallelCluster wants them (DNS on), a key pair and an AMI in the emulator."""
    monkeypatch.setenv("PCLUSTER", str(pcluster))
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsSupport={"Value": True})
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone="eu-west-1a")["Subnet"]
    ec2.create_key_pair(KeyName="lab")
    ami = ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
    return {"subnet": subnet["SubnetId"], "ami": ami}


def config_args(account, tmp_path, *extra: str) -> list[str]:
    return [
        "cluster", "config", "cryo", "--subnet", account["subnet"], "--key", "lab",
        "--compute-ami", account["ami"], "--desktop-ami", account["ami"],
        "--out", str(tmp_path / "cluster.yaml"), "--hosts-conf", str(tmp_path / "hosts.conf"), *extra,
    ]  # fmt: skip


def test_config_passes_parallelclusters_schema_and_scales_from_zero(cli, account, tmp_path):
    queues = ["--gpu-queue", "g4dn.xlarge:4", "--cpu-queue", "c5.2xlarge"]
    out = cli.json(*config_args(account, tmp_path, *queues, "--tag", "project=ribosome"))
    assert out["queues"] == ["g4dn-xlarge", "g4dn-xlarge-spot", "c5-2xlarge"]
    config = yaml.safe_load((tmp_path / "cluster.yaml").read_text())
    queues = {q["Name"]: q for q in config["Scheduling"]["SlurmQueues"]}
    assert (
        queues["g4dn-xlarge"]["CapacityType"] == "ONDEMAND"
        and queues["g4dn-xlarge-spot"]["CapacityType"] == "SPOT"
    )
    for queue in queues.values():
        resource = queue["ComputeResources"][0]
        assert resource["MinCount"] == 0 and queue["Image"]["CustomAmi"] == account["ami"]
    # g4dn.xlarge: 16384 MiB in EC2's description -> ParallelCluster's 95 % floor
    assert queues["g4dn-xlarge"]["ComputeResources"][0]["SchedulableMemory"] == 15564
    assert config["Scheduling"]["SlurmSettings"]["EnableMemoryBasedScheduling"] is True
    assert config["SharedStorage"][0]["StorageType"] == "FsxLustre"
    assert config["SharedStorage"][0]["MountDir"] == "/data"
    assert config["LoginNodes"]["Pools"][0]["Image"]["CustomAmi"] == account["ami"]
    assert {"Key": "scipioncloud:cluster", "Value": "cryo"} in config["Tags"]
    assert {"Key": "project", "Value": "ribosome"} in config["Tags"]
    # the hosts.conf for the desktop offers the same queues, sized from the instance types
    hosts = configparser.RawConfigParser(comment_prefixes=";")
    hosts.read(tmp_path / "hosts.conf")
    rows = json.loads(hosts["localhost"]["QUEUES"])
    assert list(rows) == ["g4dn-xlarge", "c5-2xlarge", "g4dn-xlarge-spot"]
    gpu = {r[0]: r[1] for r in rows["g4dn-xlarge"]}
    assert gpu == {"GPU_COUNT": "1", "JOB_MEMORY": "15564", "JOB_TIME": "24", "JOB_REQUEUE": "no-requeue"}
    assert {r[0]: r[1] for r in rows["c5-2xlarge"]}["GPU_COUNT"] == "0"
    # the Spot twin (CapacityType SPOT) asks Slurm to requeue a job whose node is reclaimed
    assert {r[0]: r[1] for r in rows["g4dn-xlarge-spot"]}["JOB_REQUEUE"] == "requeue"


def test_config_passes_every_pcluster_validator_against_the_emulator(cli, account, tmp_path):
    cli.json(*config_args(account, tmp_path, "--gpu-queue", "g4dn.xlarge", "--storage", "efs"))
    args = ["cluster", "create", "cryo", "--config", str(tmp_path / "cluster.yaml"), "--dryrun"]
    for gap in MOTO_GAPS:
        args += ["--suppress-validator", gap]
    answer = cli.json(*args)
    assert "DryRun flag is set" in answer["message"], answer


def test_pcluster_validators_refusal_is_reported_with_their_messages(cli, account, tmp_path):
    cli.json(*config_args(account, tmp_path, "--gpu-queue", "g4dn.xlarge", "--storage", "efs"))
    result = cli("cluster", "create", "cryo", "--config", str(tmp_path / "cluster.yaml"), "--dryrun")
    assert result.exit_code == 1
    assert "Invalid cluster configuration" in result.output and "KeyPairValidator" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gpu-queue", "g4dn.xlarge", "--storage", "none"], "must live on storage that the head node"),
        (["--gpu-queue", "g9.huge"], "unknown instance type 'g9.huge'"),
        (["--gpu-queue", "c5.2xlarge"], "c5.2xlarge has no NVIDIA GPU"),
        ([], "at least one queue"),
    ],
)
def test_broken_choices_are_refused_before_anything_is_written(cli, account, tmp_path, extra, message):
    result = cli(*config_args(account, tmp_path, *extra))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "cluster.yaml").exists()


def test_schema_refusals_come_from_parallelcluster(tmp_path, pcluster):
    config = {
        "Region": "eu-west-1",
        "Image": {"Os": "ubuntu2204"},
        "HeadNode": {"InstanceType": "c6i.xlarge", "Networking": {"SubnetId": "subnet-1"}},
        "Scheduling": {"Scheduler": "slurm", "SlurmQueues": []},
        "SharedStorage": [{"MountDir": "/data", "Name": "p", "StorageType": "Lustre"}],
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match=r"Must be one of: Ebs, FsxLustre") as caught:
        parallelcluster.validate(path, "cryo", pcluster, "eu-west-1")
    assert type(caught.value).__name__ == "BadInput"


def test_status_of_a_missing_cluster_is_a_clear_error(cli, account):
    result = cli("cluster", "status", "nosuch")
    assert result.exit_code == 2
    assert "Cluster 'nosuch' does not exist" in result.output


def test_our_pcluster_argv_matches_pclusters_own_options(pcluster):
    import subprocess

    from scipioncloud.cluster import pcluster_cli

    argvs = {
        "create-cluster": pcluster_cli.create_argv(
            pcluster, "c", "f.yaml", "eu-west-1", dryrun=True, suppress=("KeyPairValidator",)
        ),
        "describe-cluster": pcluster_cli.describe_argv(pcluster, "c", "eu-west-1"),
        "delete-cluster": pcluster_cli.delete_argv(pcluster, "c", "eu-west-1"),
    }
    for command, argv in argvs.items():
        assert argv[1] == command
        helptext = subprocess.run([str(pcluster), command, "--help"], capture_output=True, text=True).stdout
        for option in (a for a in argv if a.startswith("--")):
            assert option in helptext, (command, option)
