"""`scipioncloud bake` as an operator meets it, against the moto EC2 server: it stops with a clear message
before anything costs money, and a Packer failure says where the full log is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "scipioncloud")


def run(args: list[str], env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "bake", *args, "--out", str(tmp_path / "build")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_unknown_image_lists_the_known_ones(tmp_path):
    done = run(["scipion-dekstop"], dict(os.environ), tmp_path)
    assert done.returncode != 0
    assert "unknown image 'scipion-dekstop'; known images: scipion-compute, scipion-desktop" in done.stderr


def test_no_credentials_stops_before_packer(tmp_path, moto_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=moto_server.url, AWS_EC2_METADATA_DISABLED="true")
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    done = run(["scipion-desktop", "--region", "eu-west-1"], env, tmp_path)
    assert done.returncode != 0
    assert "no AWS credentials found" in done.stderr and "AWS_PROFILE" in done.stderr
    assert "`make rehearse` bakes the same image offline" in done.stderr and "minutes" in done.stderr
    assert not (tmp_path / "build").exists()  # nothing built, no Packer log
    as_json = run(["scipion-desktop", "--region", "eu-west-1", "--json"], env, tmp_path)
    assert as_json.returncode == 1
    assert (
        "no AWS credentials found" in json.loads(as_json.stdout)["error"]
    )  # one document, like every command


def test_bake_takes_the_options_every_command_takes():
    from click.testing import CliRunner

    from scipioncloud.cli import main

    help_text = CliRunner().invoke(main, ["bake", "--help"]).output
    for option in ("--json", "--region", "--profile"):
        assert option in help_text


def test_bake_leaves_the_process_path_alone(tmp_path, aws_env, monkeypatch):
    """The Packer driver hands Packer the venv's ansible-playbook as a variable; PATH stays as it was."""
    from scipioncloud import bake as driver

    before = os.environ["PATH"]
    with pytest.raises(driver.BakeError):
        driver.run_packer(driver.packer_path(), "validate", REPO / "packer", tmp_path / "log", False,
                          var={"ansible_playbook": driver.ansible_playbook()})  # fmt: skip
    assert os.environ["PATH"] == before
    assert driver.ansible_playbook() == str(Path(sys.executable).parent / "ansible-playbook")


def test_disabled_copy_region_stops_before_packer(tmp_path, aws_env):
    done = run(
        ["scipion-desktop", "--region", "eu-west-1", "--copy-to", "mars-north-1"], dict(os.environ), tmp_path
    )
    assert done.returncode != 0
    assert "region(s) mars-north-1 not enabled" in done.stderr
    assert not (tmp_path / "build").exists()


def test_packer_failure_says_where_the_log_is(tmp_path, aws_env):
    done = run(["scipion-compute", "--var", "ubuntu_version=20.04", "--quiet"], dict(os.environ), tmp_path)
    assert done.returncode != 0
    assert "packer validate failed" in done.stderr and "full log: " in done.stderr
    assert "ubuntu_version must be 22.04 or 24.04" in done.stderr  # Packer's own words, not only the log
    log = Path(done.stderr.split("full log: ")[1].split()[0])
    assert log.exists() and "ubuntu_version must be 22.04 or 24.04" in log.read_text()


def test_validate_only_checks_every_image_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = run(["--validate-only", "--all"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "scipion-compute: packer validate and ansible syntax check passed" in done.stdout
    assert "scipion-desktop: packer validate and ansible syntax check passed" in done.stdout


@pytest.mark.parametrize(("version", "codename"), [("22.04", "jammy"), ("24.04", "noble")])
def test_source_ami_filter_finds_the_latest_canonical_base(aws_env, version, codename):
    """The template's name filter, as written, resolves each selectable Ubuntu to Canonical's newest amd64."""
    import re

    import boto3

    template = (REPO / "packer/scipioncloud.pkr.hcl").read_text()
    # Canonical's name filter (the default of the conditional: a ParallelCluster base image may replace it)
    pattern = re.search(r'"(ubuntu/images/[^"]+)"', template).group(1)
    pattern = pattern.replace("${local.ubuntu_codename}", codename).replace("${var.ubuntu_version}", version)
    images = boto3.client("ec2").describe_images(
        Owners=["099720109477"],
        Filters=[
            {"Name": "name", "Values": [pattern]},
            {"Name": "root-device-type", "Values": ["ebs"]},
            {"Name": "virtualization-type", "Values": ["hvm"]},
        ],
    )["Images"]
    newest = max(images, key=lambda i: i["CreationDate"])
    assert all(f"ubuntu-{codename}-{version}-amd64-server-" in i["Name"] for i in images), images
    assert newest["Name"].endswith({"22.04": "20241002", "24.04": "20241119"}[version])


def test_gpu_quota_is_checked_before_packer(tmp_path, aws_env, monkeypatch):
    """A new account at 0 G-family vCPUs hears it before any Packer step (quota answered by a Stubber:
    Service Quotas is not in the emulator)."""
    from botocore.stub import Stubber

    from scipioncloud import bake as driver
    from scipioncloud.aws import Aws
    from scipioncloud.errors import OperationFailed

    aws = Aws("eu-west-1")
    stub = Stubber(aws.client("service-quotas"))
    stub.add_response(
        "get_service_quota",
        {"Quota": {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA", "Value": 0.0}},
        {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"},
    )
    stub.activate()
    image = driver.find_image(REPO, "scipion-desktop")
    with pytest.raises(OperationFailed) as refused:
        driver.bake(aws, REPO, image, region="eu-west-1", copy_to=[], overrides={}, out_dir=tmp_path / "b")
    assert "needs 4 vCPUs of the 'G and VT' on-demand quota" in str(refused.value)
    assert "request-service-quota-increase" in str(refused.value)
    assert not (tmp_path / "b").exists()  # no wheel, no Packer log
