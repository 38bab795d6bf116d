"""Archive frees a movie only when the stored bytes are known to be the file's: on an endpoint that checks
the checksums it is sent (Amazon S3), S3's checksum says so; on one that keeps any checksum it is given
(moto, `rclone serve s3`), the reported checksum is our own echoed, so the object is read back."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from agent.data import archive
from agent.s3 import checksums as sums
from agent.s3 import probe
from tests.data.conftest import MiB, cli_json, client_for, make_movie, run_cli
from tests.support import rclone_s3
from tests.support.s3_proxy import S3Proxy, checking_proxy, s3_error

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def unknown_endpoints(monkeypatch):
    monkeypatch.setattr(probe, "_known", {})  # each test asks its endpoint afresh


@pytest.fixture
def rclone(tmp_path):
    server = rclone_s3.start(tmp_path / "rclone-root", tmp_path / "rclone.log")
    yield server
    server.stop()


def upload(client, key: str, movie: Path, *, damaged: bool = False, **extra) -> None:
    """The movie's bytes with its CRC64NVME, as our uploads send them; `damaged`: one byte flipped, which is
    what a transfer damaged on the way leaves on an endpoint that does not check."""
    data = bytearray(movie.read_bytes())
    if damaged:
        data[len(data) // 2] ^= 0xFF
    checksum = sums.file_checksum(movie, None, False)
    client.put_object(Bucket="lab-movies", Key=key, Body=bytes(data), ChecksumAlgorithm=sums.ALGORITHM,
                      ChecksumCRC64NVME=checksum, **extra)  # fmt: skip


@pytest.mark.parametrize("endpoint", ["moto", "rclone"])
def test_an_endpoint_that_keeps_any_checksum_is_found_out_and_the_object_read_back(
    endpoint, aws_env, request, tmp_path
):
    if endpoint == "moto":
        client = boto3.client("s3")
        client.create_bucket(
            Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
    else:
        rclone = request.getfixturevalue("rclone")  # started only for this case
        client = client_for(rclone.url, rclone.env())
        client.create_bucket(Bucket="lab-movies")
    assert probe.checks_checksums(client, "lab-movies", "archive/mov_00.tif") is False
    assert "Contents" not in client.list_objects_v2(Bucket="lab-movies")  # the probe left nothing behind

    movie = make_movie(tmp_path / "mov_00.tif", 3 * MiB + 11, seed=4)
    upload(client, "archive/mov_00.tif", movie, damaged=True)
    head = client.head_object(Bucket="lab-movies", Key="archive/mov_00.tif", ChecksumMode="ENABLED")
    assert sums.object_checksum(head) == sums.file_checksum(movie, None, False)  # the echo: it proves nothing
    with pytest.raises(archive.VerifyError, match="read back"):
        archive.verify(client, "lab-movies", "archive/mov_00.tif", movie, movie.stat())
    assert movie.exists()

    upload(client, "archive/mov_00.tif", movie)
    assert archive.verify(client, "lab-movies", "archive/mov_00.tif", movie, movie.stat())


def test_an_endpoint_that_checks_is_trusted_without_reading_back(aws_env, tmp_path):
    proxy = checking_proxy(aws_env["AWS_ENDPOINT_URL"])
    try:
        client = client_for(proxy.url, aws_env)
        client.create_bucket(
            Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        assert probe.checks_checksums(client, "lab-movies", "archive/mov_00.tif") is True
        assert "Contents" not in client.list_objects_v2(Bucket="lab-movies")  # the probe was refused
        movie = make_movie(tmp_path / "mov_00.tif", 3 * MiB + 11, seed=4)
        with pytest.raises(client.exceptions.ClientError, match="BadDigest"):
            upload(client, "archive/mov_00.tif", movie, damaged=True)  # refused, as S3 does
        upload(client, "archive/mov_00.tif", movie)
        proxy.requests.clear()
        assert archive.verify(client, "lab-movies", "archive/mov_00.tif", movie, movie.stat())
        assert [m for m, _ in proxy.requests] == ["HEAD"]  # S3's word, no read back (no retrieval fee)
    finally:
        proxy.close()


def test_a_glacier_object_on_an_endpoint_that_does_not_check_is_not_freed(aws_env, tmp_path):
    # It cannot be read back without a restore: the agent uploads such movies in STANDARD, reads them back,
    # then copies them into the class (tests/data/test_archive.py); one already there stays unfreed.
    client = boto3.client("s3")
    client.create_bucket(Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    movie = make_movie(tmp_path / "mov_00.tif", MiB, seed=5)
    upload(client, "k", movie, StorageClass="DEEP_ARCHIVE")
    with pytest.raises(archive.VerifyError, match="cannot be read back"):
        archive.verify(client, "lab-movies", "k", movie, movie.stat())
    assert movie.exists() and os.path.getsize(movie) == MiB


def test_a_probe_refused_for_another_reason_is_no_answer(aws_env):
    # A bucket policy that allows writes only under the archive prefix: the probe goes beside the movie, and
    # a refusal for any other reason than the checksum is not taken as "checks" nor remembered.
    refusing = True
    written = []

    def policy(method: str, path: str, headers: dict, body: bytes):
        if method == "PUT" and probe.PROBE_NAME in path:
            written.append(path)
            if refusing:
                return 403, s3_error("AccessDenied", "Access Denied")
        return None

    proxy = S3Proxy(aws_env["AWS_ENDPOINT_URL"], refuse=policy)
    try:
        client = client_for(proxy.url, aws_env)
        client.create_bucket(
            Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        assert probe.endpoint_checks(client, "lab-movies", "archive/p1/mov_00.tif") is None
        assert probe.checks_checksums(client, "lab-movies", "archive/p1/mov_00.tif") is False
        refusing = False
        assert probe.endpoint_checks(client, "lab-movies", "archive/p1/mov_00.tif") is False  # asked again
        assert written == ["/lab-movies/archive/p1/.scipioncloud-checksum-probe"] * 3
        assert probe.checks_checksums(client, "lab-movies", "archive/p1/mov_01.tif") is False
        assert len(written) == 3  # answered now: remembered for the endpoint and bucket
    finally:
        proxy.close()


def test_a_push_says_whether_the_endpoint_checked_what_it_was_sent(aws_env, cli_env, tmp_path):
    src = tmp_path / "movies"
    make_movie(src / "mov_00.tif", MiB, seed=6)
    proxy = checking_proxy(aws_env["AWS_ENDPOINT_URL"])
    try:
        checked = {**cli_env, "AWS_ENDPOINT_URL": proxy.url}
        code, out = cli_json(checked, "data", "push", str(src), "s3://lab-movies/s1", "--create-bucket")
        assert code == 0 and out["transferred"] == ["s1/mov_00.tif"], out
        assert out["endpoint_checks_checksums"] is True and out["unverified"] == []
    finally:
        proxy.close()
    # moto itself keeps any checksum it is sent: said in --json and as a warning on the terminal
    code, out = cli_json(cli_env, "data", "push", str(src), "s3://lab-movies/s2")
    assert code == 0 and out["endpoint_checks_checksums"] is False and out["unverified"] == ["s2/mov_00.tif"]
    make_movie(src / "mov_01.tif", MiB, seed=7)
    result = run_cli(cli_env, "data", "push", str(src), "s3://lab-movies/s2")
    assert result.returncode == 0, result.stderr
    assert (
        "WARNING: 1 file(s) sent but not checked on arrival: this endpoint keeps the checksums it is sent "
        "without checking the bytes" in result.stdout
    )
    listed = boto3.client("s3").list_objects_v2(Bucket="lab-movies")["Contents"]
    keys = sorted(o["Key"] for o in listed)
    assert keys == ["s1/mov_00.tif", "s2/mov_00.tif", "s2/mov_01.tif"]  # no probe left behind
