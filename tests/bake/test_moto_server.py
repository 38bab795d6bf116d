"""The AWS stand-in itself: our tests rely on it listing Canonical's Ubuntu images."""

import boto3
import pytest

pytestmark = pytest.mark.integration


def test_emulator_lists_canonical_ubuntu_images(aws_env):
    ec2 = boto3.client("ec2")
    assert ec2.meta.endpoint_url.startswith("http://127.0.0.1:")
    images = ec2.describe_images(
        Owners=["099720109477"],
        Filters=[
            {"Name": "name", "Values": ["ubuntu/images/*ubuntu-noble-24.04-amd64-server-*"]},
            {"Name": "architecture", "Values": ["x86_64"]},
        ],
    )["Images"]
    newest = max(images, key=lambda i: i["CreationDate"])
    assert newest["Name"].endswith("20241119")
