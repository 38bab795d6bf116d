"""Fixtures for the operator's CLI: drive the real click command against the moto server (AWS_ENDPOINT_URL)
and record which EC2 calls it made."""

from __future__ import annotations

import json

import boto3
import pytest
from click.testing import CliRunner

from scipioncloud import aws as aws_module
from scipioncloud.cli import main
from scipioncloud.tags import TAG_GPU, TAG_IMAGE

CANONICAL = "099720109477"
CIDR = "203.0.113.7/32"  # TEST-NET-3: never a real caller


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(main, list(args), catch_exceptions=False)

    def json(self, *args: str):
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def cli(aws_env, monkeypatch) -> Cli:
    monkeypatch.setenv("SCIPIONCLOUD_WAIT_DELAY", "0.1")
    monkeypatch.setenv("SCIPIONCLOUD_CHECKIP_URL", "http://127.0.0.1:9/")  # never a public address
    return Cli()


@pytest.fixture
def ec2(aws_env):
    return boto3.client("ec2")


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """EC2 operation names the CLI sends, in order (a botocore event hook on every session it makes)."""
    seen: list[str] = []
    real = aws_module.make_session

    def recording(region, profile):
        session = real(region, profile)
        session.events.register("before-call.ec2", lambda model, **_: seen.append(model.name))
        return session

    monkeypatch.setattr(aws_module, "make_session", recording)
    return seen


def make_ami(ec2, name: str, image: str = "scipion-desktop", gpu: bool = True) -> str:
    """An AMI of ours the way the bake leaves it: made from an instance, tagged with its image name."""
    base = ec2.describe_images(Owners=[CANONICAL])["Images"][0]["ImageId"]
    builder = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
    ami = ec2.create_image(InstanceId=builder["InstanceId"], Name=name)["ImageId"]
    ec2.terminate_instances(InstanceIds=[builder["InstanceId"]])
    tags = [{"Key": TAG_IMAGE, "Value": image}]
    if gpu:
        tags.append({"Key": TAG_GPU, "Value": "required"})
    ec2.create_tags(Resources=[ami], Tags=tags)
    return ami


@pytest.fixture
def our_ami(ec2) -> str:
    return make_ami(ec2, "scipion-desktop-20261124")


@pytest.fixture
def key_pair(ec2) -> str:
    ec2.create_key_pair(KeyName="lab")
    return "lab"


def launch(cli: Cli, *extra: str) -> dict:
    return cli.json(
        "launch",
        "--image",
        "scipion-desktop",
        "--type",
        "g4dn.xlarge",
        "--key",
        "lab",
        "--cidr",
        CIDR,
        "--no-wait",
        *extra,
    )
