"""`scipioncloud data push/pull/bucket` against S3 on 127.0.0.1 (moto server, real HTTP, real boto3)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.httpchecksum import CrtCrc64NvmeChecksum

from agent.s3 import checksums as sums
from tests.data.conftest import MiB, cli_json, client_for, make_movie, run_cli
from tests.support.s3_proxy import S3Proxy, checking_proxy

pytestmark = pytest.mark.integration


def crt_crc64(path: Path) -> str:
    """botocore's own CRC64NVME of a file's bytes (its class for the x-amz-checksum-crc64nvme header)."""
    checksum = CrtCrc64NvmeChecksum()
    checksum.update(path.read_bytes())
    return checksum.b64digest()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_pull_round_trip_only_changed_and_private_bucket(cli_env, s3, tmp_path):
    src = tmp_path / "movies"
    for i in range(3):
        make_movie(src / f"grid1/movie_{i:03d}.tif", 11 * MiB + i * 4097, seed=i)
    make_movie(src / "gain.mrc", 300_000, seed=9)
    code, out = cli_json(cli_env, "data", "push", str(src), "s3://lab-movies/session1", "--create-bucket",
                         "--part-size-mb", "5")  # fmt: skip
    assert code == 0, out
    assert len(out["transferred"]) == 4 and out["failed"] == {}
    # The bucket the CLI made: every public-access block on, encrypted at rest (read back from S3).
    block = s3.get_public_access_block(Bucket="lab-movies")["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rule = s3.get_bucket_encryption(Bucket="lab-movies")["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # S3's own checksum of each object (CRC64NVME of the whole object, which moto computes from the bytes
    # of the parts) equals the file's, and the one the push combined from its parts' CRCs.
    head = s3.head_object(Bucket="lab-movies", Key="session1/grid1/movie_001.tif", ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in head and head["ChecksumCRC64NVME"] == crt_crc64(
        src / "grid1/movie_001.tif"
    )
    whole = s3.get_object(Bucket="lab-movies", Key="session1/grid1/movie_001.tif", ChecksumMode="ENABLED")
    assert whole["ChecksumType"] == "FULL_OBJECT"
    whole["Body"].read()  # botocore checks the answer's CRC64NVME itself (its default, awscrt installed)
    assert sums.same(
        sums.file_checksum(src / "grid1/movie_001.tif", 5 * MiB, True), head["ChecksumCRC64NVME"]
    )

    dest = tmp_path / "back"
    code, out = cli_json(cli_env, "data", "pull", "s3://lab-movies/session1", str(dest))
    assert code == 0, out
    assert out["egress"]["gb"] == pytest.approx(
        sum(p.stat().st_size for p in src.rglob("*.*")) / 1e9, abs=1e-3
    )
    assert tree(dest) == tree(src)

    # A re-run sends nothing; a changed file is sent again, and only it.
    code, out = cli_json(cli_env, "data", "push", str(src), "s3://lab-movies/session1")
    assert code == 0 and out["transferred"] == [] and len(out["skipped"]) == 4
    with open(src / "gain.mrc", "ab") as f:
        f.write(b"more")
    code, out = cli_json(cli_env, "data", "push", str(src), "s3://lab-movies/session1")
    assert out["transferred"] == ["session1/gain.mrc"]
    code, out = cli_json(cli_env, "data", "pull", "s3://lab-movies/session1", str(dest))
    assert code == 0 and out["transferred"] == ["session1/gain.mrc"] and len(out["skipped"]) == 3
    assert tree(dest) == tree(src)


def test_bucket_lifecycle(cli_env, s3):
    args = [
        "--create",
        "--transition",
        "30:GLACIER_IR",
        "--transition",
        "180:DEEP_ARCHIVE",
        "--prefix",
        "raw/",
    ]
    code, out = cli_json(cli_env, "data", "bucket", "lab-archive", *args)
    assert code == 0, out
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket="lab-archive")["Rules"]}
    tiers = [(t["Days"], t["StorageClass"]) for t in rules["scipioncloud-movies-tiering"]["Transitions"]]
    assert tiers == [(30, "GLACIER_IR"), (180, "DEEP_ARCHIVE")]
    assert "scipioncloud-abort-incomplete-uploads" in rules
    code, out = cli_json(cli_env, "data", "bucket", "lab-archive", "--transition", "30:TAPE")
    assert code == 2 and "unknown storage class" in out["error"]


def uploaded_parts(s3, bucket: str, key: str) -> int:
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    mine = [u for u in uploads if u["Key"] == key]
    if not mine:
        return 0
    return len(s3.list_parts(Bucket=bucket, Key=key, UploadId=mine[0]["UploadId"]).get("Parts", []))


def start_push(env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scipioncloud.cli", "data", "push", *args, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_crash_during_push_resumes_without_resending_parts(cli_env, s3, tmp_path):
    s3.create_bucket(Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    movie = make_movie(tmp_path / "movies/big.tif", 40 * MiB + 123)  # 9 parts of 5 MiB
    args = [str(movie), "s3://lab-movies/run/big.tif", "--part-size-mb", "5", "--concurrency", "1"]
    process = start_push(cli_env, *args, "--bwlimit", "10MB")
    try:
        wait_for(lambda: uploaded_parts(s3, "lab-movies", "run/big.tif") >= 3)
    finally:
        process.send_signal(signal.SIGKILL)  # a crash: no cleanup of any kind
        process.communicate(timeout=30)
    in_s3 = uploaded_parts(s3, "lab-movies", "run/big.tif")
    (state_file,) = (Path(cli_env["XDG_STATE_HOME"]) / "scipioncloud/uploads").glob("*.json")
    recorded = len(json.loads(state_file.read_text())["parts"])
    assert 3 <= in_s3 < 9 and in_s3 - 1 <= recorded <= in_s3  # at most the part in flight is unrecorded
    code, out = cli_json(cli_env, "data", "push", *args)
    assert code == 0, out
    assert out["parts_resumed"] == recorded and out["parts_sent"] == 9 - recorded
    head = s3.head_object(Bucket="lab-movies", Key="run/big.tif", ChecksumMode="ENABLED")
    assert head["ContentLength"] == movie.stat().st_size
    assert head["ChecksumCRC64NVME"] == crt_crc64(movie)  # the resumed parts' CRCs were combined right
    body = s3.get_object(Bucket="lab-movies", Key="run/big.tif")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha(movie)
    assert s3.list_multipart_uploads(Bucket="lab-movies").get("Uploads", []) == []


def test_file_changed_during_upload_is_not_kept(cli_env, s3, tmp_path):
    s3.create_bucket(Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    movie = make_movie(tmp_path / "movies/growing.tif", 20 * MiB)
    args = [str(movie), "s3://lab-movies/run/growing.tif", "--part-size-mb", "5", "--concurrency", "1"]
    process = start_push(cli_env, *args, "--bwlimit", "10MB")
    wait_for(lambda: uploaded_parts(s3, "lab-movies", "run/growing.tif") >= 1)
    with open(movie, "ab") as f:  # the microscope is still writing it
        f.write(os.urandom(1000))
    stdout, _stderr = process.communicate(timeout=60)
    out = json.loads(stdout)
    assert process.returncode == 1
    assert "changed while uploading" in out["failed"][str(movie)]
    assert s3.list_objects_v2(Bucket="lab-movies").get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket="lab-movies").get("Uploads", []) == []
    code, out = cli_json(cli_env, "data", "push", *args)  # once complete, a re-run sends it
    assert code == 0 and out["transferred"] == ["run/growing.tif"]


def test_bucket_without_permission(tmp_path):
    """A moto server of its own with IAM checks on: a user allowed only to list gets a clear refusal."""
    from tests.support import moto_server as moto

    server = moto.start(tmp_path / "moto-auth.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        env = {**os.environ, **server.env(), "XDG_STATE_HOME": str(tmp_path / "state")}
        creds = {k.lower(): v for k, v in moto.FAKE_CREDENTIALS.items()}
        admin = boto3.client("s3", endpoint_url=server.url, region_name="eu-west-1", **creds)
        iam = boto3.client("iam", endpoint_url=server.url, region_name="eu-west-1", **creds)
        admin.create_bucket(Bucket="other-lab", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        iam.create_user(UserName="student")
        iam.put_user_policy(
            UserName="student",
            PolicyName="list-only",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="student")["AccessKey"]
        env.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        env.pop("AWS_SESSION_TOKEN", None)
        movie = make_movie(tmp_path / "m.tif", 1000)
        result = run_cli(env, "data", "push", str(movie), "s3://other-lab/x/", "--json")
        assert result.returncode == 1
        assert "may not use it (403)" in json.loads(result.stdout)["error"]
        student = boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="eu-west-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        assert student.list_objects_v2(Bucket="other-lab").get("KeyCount", 0) == 0  # nothing landed
        assert "Traceback" not in result.stderr
    finally:
        server.stop()


@pytest.mark.root
def test_full_disk_during_pull(cli_env, s3, tmp_path):
    s3.create_bucket(Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for i in range(3):
        s3.put_object(Bucket="lab-movies", Key=f"run/m{i}.tif", Body=os.urandom(6 * MiB))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(small)], check=True)
    try:
        code, out = cli_json(cli_env, "data", "pull", "s3://lab-movies/run", str(small / "movies"))
        assert code == 1
        assert "GB free but the pull needs" in out["error"]
        assert list((small / "movies").iterdir()) == []
        # Space that runs out after the check (another writer): the partial file is refused up front,
        # removed, and the error says what to do; what was complete stays complete.
        (small / "filler").write_bytes(b"\0" * (2 * MiB))
        code, out = cli_json(cli_env, "data", "pull", "s3://lab-movies/run/m0.tif", str(small / "movies"))
        assert code == 0, out
        (small / "filler").unlink()
        ballast = small / "ballast"
        ballast.write_bytes(b"\0" * (3 * MiB))
        from agent.s3 import transfer

        client = boto3.client("s3")
        totals = transfer.Totals()
        objects = transfer.list_objects(client, transfer.S3Url("lab-movies", "run/m1.tif"))
        transfer.Puller(client, "lab-movies", totals=totals).pull_many(
            [(objects[0], small / "movies/m1.tif")]
        )
        assert "no space" in next(iter(totals.failed.values()))
        assert sorted(p.name for p in (small / "movies").iterdir()) == ["m0.tif"]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_restore_from_glacier_quotes_then_brings_back_identical_bytes(cli_env, s3, tmp_path):
    src = tmp_path / "movies"
    for i in range(2):
        make_movie(src / f"m{i}.tif", 6 * MiB, seed=i)
    code, out = cli_json(cli_env, "data", "push", str(src), "s3://lab-movies/old", "--create-bucket",
                         "--storage-class", "GLACIER", "--part-size-mb", "5")  # fmt: skip
    assert code == 0, out
    code, out = cli_json(cli_env, "data", "pull", "s3://lab-movies/old", str(tmp_path / "x"))
    assert code == 2 and "data restore" in out["error"]  # archived objects need a restore first
    code, out = cli_json(
        cli_env, "data", "restore", "s3://lab-movies/old", str(tmp_path / "back"), "--tier", "Bulk"
    )
    assert code == 0 and out["started"] is False
    (line,) = out["quote"]["lines"]
    assert line["storage_class"] == "GLACIER" and line["tier"] == "Bulk" and line["hours"] == [5, 12]
    assert not (tmp_path / "back").exists()
    code, out = cli_json(cli_env, "data", "restore", "s3://lab-movies/old", str(tmp_path / "back"), "--tier",
                         "Bulk", "--yes", "--poll-s", "0.2")  # fmt: skip
    assert code == 0, out
    assert "ongoing-request" in s3.head_object(Bucket="lab-movies", Key="old/m0.tif")["Restore"]
    assert tree(tmp_path / "back") == tree(src)


def test_a_given_bucket_is_made_private_and_encrypted(cli_env, s3, tmp_path):
    s3.create_bucket(Bucket="old-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.delete_bucket_encryption(Bucket="old-bucket")
    movie = make_movie(tmp_path / "m.tif", 1000)
    code, out = cli_json(cli_env, "data", "push", str(movie), "s3://old-bucket/x/")
    assert code == 0, out
    block = s3.get_public_access_block(Bucket="old-bucket")["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    assert s3.get_bucket_encryption(Bucket="old-bucket")["ServerSideEncryptionConfiguration"]["Rules"]


class CorruptingProxy(S3Proxy):
    """Flips the first byte of every GET body whose path names a `bad` key: S3's bytes damaged on the way,
    which moto itself never does. Everything else passes through unchanged (headers, HEAD answers with their
    checksums, listings)."""

    def __init__(self, upstream: str) -> None:
        self.corrupted = 0

        def flip(method: str, path: str, status: int, data: bytes) -> bytes:
            if method == "GET" and status in (200, 206) and "bad" in path and data:
                self.corrupted += 1
                return bytes([data[0] ^ 0xFF]) + data[1:]
            return data

        super().__init__(upstream, alter=flip)


def test_bytes_damaged_on_the_way_fail_the_pull_loudly_and_leave_nothing(cli_env, s3, tmp_path):
    src = tmp_path / "movies"
    make_movie(src / "bad_multipart.tif", 11 * MiB, seed=1)  # 3 parts of 5 MiB, pulled in 2 ranges
    make_movie(src / "bad_single.tif", 3 * MiB, seed=2)  # one PutObject: plain checksum
    make_movie(src / "good.tif", 2 * MiB, seed=3)
    code, out = cli_json(cli_env, "data", "push", str(src), "s3://lab-movies/run", "--create-bucket",
                         "--part-size-mb", "5")  # fmt: skip
    assert code == 0, out
    dest = tmp_path / "back"
    proxy = CorruptingProxy(cli_env["AWS_ENDPOINT_URL"])
    try:
        code, out = cli_json({**cli_env, "AWS_ENDPOINT_URL": proxy.url}, "data", "pull", "s3://lab-movies/run",
                             str(dest))  # fmt: skip
    finally:
        proxy.close()
    assert proxy.corrupted >= 2  # the proxy did damage both bad objects
    assert code == 1, out
    assert set(out["failed"]) == {str(dest / "bad_multipart.tif"), str(dest / "bad_single.tif")}
    assert all("checksum mismatch" in message for message in out["failed"].values())
    # Nothing half-written or damaged at the destination (no file, partial or state); the good one is whole.
    assert sorted(p.name for p in dest.iterdir()) == ["good.tif"]
    assert sha(dest / "good.tif") == sha(src / "good.tif")

    code, out = cli_json(cli_env, "data", "pull", "s3://lab-movies/run", str(dest))  # the proxy is gone
    assert code == 0 and out["failed"] == {}, out
    assert tree(dest) == tree(src)


def put_like_earlier_versions(s3, bucket: str, key: str, path: Path, part_size: int | None) -> None:
    """An object as our uploads wrote it before CRC64NVME: SHA-256, composite when multipart, the part size
    in its metadata. botocore computes every SHA-256 (ChecksumAlgorithm), S3 (moto) the composite."""
    data = path.read_bytes()
    if part_size is None:
        s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
        return
    meta = {sums.PART_SIZE_META: str(part_size)}
    upload = s3.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", ChecksumType="COMPOSITE", Metadata=meta
    )
    parts = []
    for number, offset in enumerate(range(0, len(data), part_size), 1):
        body = data[offset : offset + part_size]
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number,
                                Body=body, ChecksumAlgorithm="SHA256")  # fmt: skip
        parts.append(
            {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": answer["ChecksumSHA256"]}
        )
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})  # fmt: skip


def test_objects_of_earlier_versions_sha256_still_pull_verified(cli_env, s3, tmp_path):
    s3.create_bucket(Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    src = tmp_path / "movies"
    multi = make_movie(src / "bad_multi.tif", 11 * MiB, seed=4)
    put_like_earlier_versions(s3, "lab-movies", "old/bad_multi.tif", multi, 5 * MiB)
    put_like_earlier_versions(
        s3, "lab-movies", "old/bad_single.tif", make_movie(src / "bad_single.tif", 2 * MiB), None
    )
    head = s3.head_object(Bucket="lab-movies", Key="old/bad_multi.tif", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] and "ChecksumCRC64NVME" not in head  # moto's HEAD leaves off the "-3"
    assert sums.same(sums.checksum_like(src / "bad_multi.tif", head), head["ChecksumSHA256"])

    dest = tmp_path / "back"
    proxy = CorruptingProxy(cli_env["AWS_ENDPOINT_URL"])
    try:  # damaged on the way: the SHA-256 checks of the old objects still catch it
        code, out = cli_json({**cli_env, "AWS_ENDPOINT_URL": proxy.url}, "data", "pull", "s3://lab-movies/old",
                             str(dest))  # fmt: skip
    finally:
        proxy.close()
    assert code == 1 and proxy.corrupted >= 2, out
    assert set(out["failed"]) == {str(dest / "bad_multi.tif"), str(dest / "bad_single.tif")}
    assert all("checksum mismatch" in message for message in out["failed"].values())
    assert not dest.exists() or list(dest.iterdir()) == []

    code, out = cli_json(cli_env, "data", "pull", "s3://lab-movies/old", str(dest))
    assert code == 0 and out["failed"] == {}, out
    assert tree(dest) == tree(src)


def test_an_upload_is_confirmed_by_the_servers_checksum_or_reported_unverified(
    aws_env, tmp_path, monkeypatch
):
    """The upload's answer must carry the checksum S3 computed; moto's CompleteMultipartUpload answer has
    none (S3's has), so the push asks HeadObject. Another checksum fails the file; none at all (a server
    that keeps no checksum) is reported, not passed as verified. Here moto sits behind a stand-in for S3's
    own check of what it is sent (tests/support/s3_proxy.py `checking_proxy`)."""
    from agent.s3 import probe, transfer
    from agent.s3.errors import TransferFailed

    monkeypatch.setattr(probe, "_known", {})  # the endpoints of this test are asked afresh
    proxy = checking_proxy(aws_env["AWS_ENDPOINT_URL"])
    try:
        s3 = client_for(proxy.url, aws_env)
        s3.create_bucket(Bucket="lab-movies", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        movie = make_movie(tmp_path / "m.tif", 12 * MiB, seed=3)
        mine = crt_crc64(movie)
        s3.put_object(Bucket="lab-movies", Key="kept", Body=movie.read_bytes(), ChecksumAlgorithm="CRC64NVME",
                      ChecksumCRC64NVME=mine)  # fmt: skip
        s3.put_object(Bucket="lab-movies", Key="bare", Body=b"no CRC64NVME or SHA-256 of ours")
        totals = transfer.Totals()
        pusher = transfer.Pusher(s3, "lab-movies", state_dir=tmp_path / "state", totals=totals)

        pusher._confirmed("kept", {"ChecksumCRC64NVME": mine}, mine)
        pusher._confirmed("kept", {}, mine)  # no checksum in the answer: HeadObject has it
        assert totals.unverified == [] and pusher.endpoint_checks("kept") is True
        with pytest.raises(TransferFailed, match="the server reports checksum"):
            pusher._confirmed("kept", {"ChecksumCRC64NVME": "AAAAAAAAAAA="}, mine)
        with pytest.raises(TransferFailed, match="the server reports checksum"):
            pusher._confirmed("kept", {}, "AAAAAAAAAAA=")
        pusher._confirmed("bare", {}, mine)
        assert totals.unverified == ["bare"]

        # the whole push: multipart (moto's completion answer has no checksum), confirmed by HEAD
        items, _ = transfer.plan_push(s3, tmp_path / "m.tif", transfer.S3Url("lab-movies", "run/m.tif"))
        pushed = transfer.Totals()
        state = tmp_path / "state"
        multipart = transfer.Pusher(s3, "lab-movies", state_dir=state, part_size=5 * MiB, totals=pushed)
        proxy.requests.clear()
        multipart.push_many(items)
        assert pushed.transferred == ["run/m.tif"] and pushed.unverified == [] and pushed.failed == {}
        assert ("HEAD", "/lab-movies/run/m.tif") in proxy.requests
    finally:
        proxy.close()

    # moto itself stores any checksum it is sent without checking it (agent/s3/probe.py): its answer and
    # HeadObject would only echo ours, so nothing is asked and the upload is reported unverified
    echo = S3Proxy(aws_env["AWS_ENDPOINT_URL"])
    try:
        s3 = client_for(echo.url, aws_env)
        items, _ = transfer.plan_push(s3, tmp_path / "m.tif", transfer.S3Url("lab-movies", "echo/m.tif"))
        pushed = transfer.Totals()
        unchecked = transfer.Pusher(s3, "lab-movies", state_dir=state, part_size=5 * MiB, totals=pushed)
        echo.requests.clear()  # planning asked whether the object is there already
        unchecked.push_many(items)
        assert pushed.transferred == ["echo/m.tif"] and pushed.unverified == ["echo/m.tif"]
        assert unchecked.endpoint_checks("echo/m.tif") is False
        assert not [path for method, path in echo.requests if method == "HEAD" and "m.tif" in path]
    finally:
        echo.close()


def test_a_one_part_object_comes_in_one_get_without_a_head_and_as_it_was_listed(cli_env, s3, tmp_path):
    # A file no bigger than a part: its GET's answer carries the checksum and ETag HeadObject would give, so
    # no HeadObject is asked; a bigger one needs it (the whole object's checksum, the ETag its ranges keep).
    from agent.s3 import transfer

    src = tmp_path / "movies"
    make_movie(src / "a.tif", 2 * MiB, seed=1)
    make_movie(src / "b.tif", 5 * MiB, seed=2)  # exactly a part
    make_movie(src / "big.tif", 11 * MiB, seed=3)
    code, out = cli_json(cli_env, "data", "push", str(src), "s3://lab-movies/run", "--create-bucket",
                         "--part-size-mb", "5")  # fmt: skip
    assert code == 0, out
    proxy = S3Proxy(cli_env["AWS_ENDPOINT_URL"])
    try:
        code, out = cli_json({**cli_env, "AWS_ENDPOINT_URL": proxy.url}, "data", "pull", "s3://lab-movies/run",
                             str(tmp_path / "back"), "--part-size-mb", "5")  # fmt: skip
    finally:
        proxy.close()
    assert code == 0 and out["failed"] == {} and out["unverified"] == [], out
    assert tree(tmp_path / "back") == tree(src)
    assert [path for method, path in proxy.requests if method == "HEAD"] == ["/lab-movies/run/big.tif"]
    gets = [path.rpartition("/")[2] for method, path in proxy.requests if method == "GET" and "/run/" in path]
    assert sorted(gets) == ["a.tif", "b.tif", "big.tif", "big.tif", "big.tif"]

    # Replaced after the listing: IfMatch holds the GET to the listed version, and nothing is put in place.
    listed = transfer.list_objects(s3, transfer.S3Url("lab-movies", "run/a.tif"))
    s3.put_object(Bucket="lab-movies", Key="run/a.tif", Body=b"a newer, shorter movie")
    totals = transfer.Totals()
    dest = tmp_path / "again" / "a.tif"
    assert transfer.Puller(s3, "lab-movies", totals=totals).pull_many([(listed[0], dest)]) == {}
    assert "PreconditionFailed" in totals.failed[str(dest)] and list(dest.parent.iterdir()) == []
