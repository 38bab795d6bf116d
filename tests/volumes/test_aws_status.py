"""AWS's own initialization state (DescribeVolumeStatus). The moto server does not implement that call
(it answers NotImplemented), so the answers AWS gives are played by botocore's Stubber at the boto3 client
boundary: a named stand-in for AWS, validated against botocore's own model of the API."""

import dataclasses
import time

import boto3
import pytest
from botocore.stub import Stubber

from agent import aws_volumes
from agent.volumes import blockdev, prewarm
from tests.volumes.conftest import needs_root, sectors_read

VOLUME = "vol-0123456789abcdef0"


def stubbed_aws(state: str | None, status: str = "ok"):
    """A real boto3 EC2 client whose DescribeVolumeStatus answer is given by Stubber (the AWS stand-in)."""
    client = boto3.client(
        "ec2", region_name="eu-west-1", aws_access_key_id="stand-in", aws_secret_access_key="stand-in"
    )
    stubber = Stubber(client)
    details = [{"Name": "io-enabled", "Status": "passed"}]
    if state:
        details.append({"Name": "initialization-state", "Status": state})
    stubber.add_response(
        "describe_volume_status",
        {"VolumeStatuses": [{"VolumeId": VOLUME, "VolumeStatus": {"Status": status, "Details": details}}]},
        {"VolumeIds": [VOLUME]},
    )
    stubber.activate()
    return client, stubber


def test_completed_initialization_is_a_reason_to_skip():
    client, stubber = stubbed_aws("completed")
    status = aws_volumes.initialization_status(VOLUME, client=client)
    stubber.assert_no_pending_responses()
    assert status["initialization_state"] == "completed" and status["status"] == "ok"
    assert "already initialized" in aws_volumes.skip_reason(status)


def test_initializing_volume_is_read():
    client, _ = stubbed_aws("initializing")
    status = aws_volumes.initialization_status(VOLUME, client=client)
    assert status["initialization_state"] == "initializing"
    assert aws_volumes.skip_reason(status) is None


def test_provisioned_rate_is_a_reason_to_skip():
    status = {"initialization_state": "initializing", "initialization_type": "provisioned-rate"}
    assert "provisioned rate" in aws_volumes.skip_reason(status)
    assert aws_volumes.skip_reason(None) is None


def test_no_credentials_is_silently_skipped_and_fast(monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    started = time.monotonic()
    assert aws_volumes.initialization_status(VOLUME, timeout=1) is None
    assert time.monotonic() - started < 5  # no network wait: only boto3's own start-up


@pytest.mark.integration
def test_an_aws_that_cannot_answer_is_silently_skipped(aws_env):
    """The moto server is real HTTP with credentials: its NotImplemented answer must not break a job."""
    started = time.monotonic()
    assert aws_volumes.initialization_status(VOLUME, timeout=2) is None
    # a bound against a retry loop or a hang, not a speed figure: client start-up alone took 5.5 s once
    # on a loaded 2-core machine
    assert time.monotonic() - started < 30


@needs_root
@pytest.mark.root
def test_job_skips_a_volume_aws_says_is_initialized(storage, loops):
    device = loops(16)
    found = dataclasses.replace(blockdev.find(storage, device), volume_id=VOLUME)
    client, _ = stubbed_aws("completed")
    manager = prewarm.PrewarmManager(
        storage, aws_status=lambda volume_id: aws_volumes.initialization_status(volume_id, client=client)
    )
    read_before = sectors_read(device)
    job = manager.start_job(found)
    job.thread.join(30)
    assert job.state == "skipped" and "already initialized" in job.reason
    assert job.to_json()["aws"]["initialization_state"] == "completed"
    assert sectors_read(device) == read_before  # not one block read
    assert manager.store.load(VOLUME).state == "skipped"  # keyed by the volume id
    remembered = manager.start_job(found)  # asked again: AWS is not even asked, nothing is read
    assert remembered.state == "skipped" and "already initialized" in remembered.reason
    assert remembered.thread is None
    # force reads it anyway
    forced_client, _ = stubbed_aws("completed")
    manager.aws_status = lambda volume_id: aws_volumes.initialization_status(volume_id, client=forced_client)
    forced = manager.start_job(found, force=True)
    forced.thread.join(60)
    assert forced.state == "done" and (sectors_read(device) - read_before) * 512 >= 16 * 1024 * 1024
