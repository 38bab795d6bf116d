"""`scipioncloud volumes create --snapshot` asks EBS for a provisioned initialization rate (the parameter
taken from botocore's own CreateVolume model), sent to the moto server as a real request."""

from __future__ import annotations

import json

import boto3
import pytest
from click.testing import CliRunner

from scipioncloud.cli import main

pytestmark = pytest.mark.integration


def test_create_from_snapshot_asks_for_an_initialization_rate(aws_env, monkeypatch):
    monkeypatch.setenv("SCIPIONCLOUD_WAIT_DELAY", "0.1")
    ec2 = boto3.client("ec2")
    sent: list[dict] = []
    import scipioncloud.aws as aws_module

    real = aws_module.make_session

    def recording(region, profile):
        session = real(region, profile)
        session.events.register(
            "provide-client-params.ec2.CreateVolume", lambda params, **_: sent.append(dict(params))
        )
        return session

    monkeypatch.setattr(aws_module, "make_session", recording)
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    volume = ec2.create_volume(AvailabilityZone=zone, Size=10)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    runner = CliRunner()
    result = runner.invoke(main, ["volumes", "create", "--snapshot", snapshot, "--zone", zone, "--json"])
    assert result.exit_code == 0, result.output
    assert sent[-1]["VolumeInitializationRate"] == 300 and sent[-1]["SnapshotId"] == snapshot
    result = runner.invoke(main, ["volumes", "create", "--snapshot", snapshot, "--init-rate", "0", "--json"])
    assert result.exit_code == 0 and "VolumeInitializationRate" not in sent[-1]
    result = runner.invoke(main, ["volumes", "create", "--snapshot", snapshot, "--init-rate", "50", "--json"])
    assert result.exit_code == 2 and "100-300" in json.loads(result.stdout)["error"]
    result = runner.invoke(main, ["volumes", "create", "--size", "5", "--init-rate", "200", "--json"])
    assert (
        result.exit_code == 2
        and "only to a volume made from a snapshot" in json.loads(result.stdout)["error"]
    )
