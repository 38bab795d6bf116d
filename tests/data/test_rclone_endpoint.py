"""Push and pull against a second real S3 implementation, `rclone serve s3` (Go; tests/support/rclone_s3.py):
the kind of S3-compatible server a lab runs on its own storage. What the movie tools rely on (additional
checksums kept and returned, multipart uploads, conditional ranged GETs) must not be moto's ways only."""

from __future__ import annotations

import os

import boto3
import pytest

from tests.data.conftest import REPO, MiB, cli_json, make_movie, run_cli
from tests.data.test_transfer import crt_crc64, tree
from tests.support import rclone_s3


@pytest.fixture
def rclone(tmp_path):
    server = rclone_s3.start(tmp_path / "s3-root", tmp_path / "rclone.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env(), XDG_STATE_HOME=str(tmp_path / "xdg-state"), PYTHONPATH=str(REPO))
    try:
        yield server, env
    finally:
        server.stop()


def test_push_and_pull_round_trip_on_rclone_serve_s3(rclone, tmp_path):
    server, env = rclone
    src = tmp_path / "movies"
    make_movie(src / "small.tif", 3 * MiB, seed=1)
    make_movie(src / "run2/big.tif", 12 * MiB + 17, seed=2)  # three parts of 5 MiB
    push = ("data", "push", str(src), "s3://lab/run")
    code, out = cli_json(env, *push, "--create-bucket", "--part-size-mb", "5")
    assert code == 0, out
    assert sorted(out["transferred"]) == ["run/run2/big.tif", "run/small.tif"]
    # rclone takes PutPublicAccessBlock for a second CreateBucket: the push says so, and goes on
    assert out["bucket"]["done"] == [
        "created",
        "WARNING: the server refused to make the bucket private and encrypted (BucketAlreadyExists)",
    ]

    s3 = boto3.client("s3", endpoint_url=server.url, region_name="eu-west-1",
                      aws_access_key_id=rclone_s3.KEY, aws_secret_access_key=rclone_s3.KEY)  # fmt: skip
    # A single PutObject keeps the CRC64NVME we sent; a multipart upload keeps none (rclone 1.75.2), so
    # that object cannot be verified end to end, and the pull says so. rclone checks neither
    # (tests/data/test_checksum_probe.py): the push checked nothing on arrival and says so for both.
    head = s3.head_object(Bucket="lab", Key="run/small.tif", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == crt_crc64(src / "small.tif")
    head = s3.head_object(Bucket="lab", Key="run/run2/big.tif", ChecksumMode="ENABLED")
    assert "ChecksumCRC64NVME" not in head and head["ContentLength"] == 12 * MiB + 17
    assert sorted(out["unverified"]) == ["run/run2/big.tif", "run/small.tif"]
    assert out["endpoint_checks_checksums"] is False

    code, out = cli_json(env, *push)
    assert code == 0 and out["transferred"] == [] and len(out["skipped"]) == 2, out
    assert out["endpoint_checks_checksums"] is None  # nothing sent, nothing asked

    code, out = cli_json(env, "data", "pull", "s3://lab/run", str(tmp_path / "back"), "--part-size-mb", "5")
    assert code == 0, out
    assert out["unverified"] == ["run/run2/big.tif"]
    assert tree(tmp_path / "back") == tree(src)
    result = run_cli(env, "data", "pull", "s3://lab/run", str(tmp_path / "again"))
    assert result.returncode == 0 and "WARNING: 1 file(s) moved but not verified end to end" in result.stdout
