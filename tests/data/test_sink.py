"""A GET's body into its file (agent/s3/sink.py): straight from the socket into one reused buffer, written
past the page cache where the filesystem allows, and buffered where it does not."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import io
import os
import subprocess
from pathlib import Path

import boto3
import pytest
import urllib3.connectionpool
from botocore.httpchecksum import StreamingChecksumBody
from botocore.response import StreamingBody

from agent.s3 import checksums as sums
from agent.s3 import sink, transfer
from tests.data.conftest import MiB, cli_json, make_movie

pytestmark = pytest.mark.integration

ODD = 3 * MiB + 12_345  # three full buffers and a tail that no block divides


def cached_bytes(path: Path) -> int:
    """Bytes of the file in the page cache, as util-linux's fincore counts them (mincore(2))."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return int(out.split()[0])


def empty_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
    return path


def test_a_get_is_received_from_the_socket_into_the_file_past_the_page_cache(s3, tmp_path):
    src = make_movie(tmp_path / "movie.tif", ODD, seed=3)
    s3.create_bucket(Bucket="sink", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.upload_file(str(src), "sink", "movie.tif")
    new_connections = []
    real_new_conn = urllib3.connectionpool.HTTPConnectionPool._new_conn

    def counted(pool):
        new_connections.append(pool)
        return real_new_conn(pool)

    dest = empty_file(tmp_path / "back.tif", ODD)
    client = boto3.client("s3")  # a pool of its own, empty
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(urllib3.connectionpool.HTTPConnectionPool, "_new_conn", counted)
        for offset, length in ((0, 2 * MiB), (2 * MiB, ODD - 2 * MiB)):
            ranged = f"bytes={offset}-{offset + length - 1}"
            body = client.get_object(Bucket="sink", Key="movie.tif", Range=ranged)["Body"]
            assert sink._socket_reader(body, False) is not None  # botocore's plain body: the socket path
            crc = sums.Crc64()
            with sink.PartFile(dest) as into:
                assert into.is_direct  # the test's filesystem takes O_DIRECT (ext4, xfs; tmpfs since 6.6)
                assert sink.receive(body, length, into, offset, crc) == offset + length
            with open(src, "rb") as f:
                f.seek(offset)
                assert crc.digest() == sums.part_digest(f.read(length))
    # Read past urllib3, the connection still went back to its pool: both GETs used one.
    assert len(new_connections) == 1
    # The bytes went to the disk, not into the page cache: only the unaligned tail passed through it.
    assert cached_bytes(dest) <= sink.ALIGN
    assert dest.read_bytes() == src.read_bytes()


def test_any_other_body_is_copied_in_and_a_short_one_stops_where_it_ended(tmp_path):
    data = os.urandom(ODD)
    dest = empty_file(tmp_path / "f", ODD)
    body = StreamingBody(io.BytesIO(data), len(data))  # not over urllib3: the copy path
    assert sink._socket_reader(body, False) is None
    crc = sums.Crc64()
    with sink.PartFile(dest) as into:
        assert sink.receive(body, ODD, into, 0, crc) == ODD
    assert dest.read_bytes() == data and crc.digest() == sums.part_digest(data)

    short = StreamingBody(io.BytesIO(data[: MiB + 7]), MiB + 7)
    with sink.PartFile(empty_file(tmp_path / "g", ODD)) as into:
        assert sink.receive(short, ODD, into, 0) == MiB + 7  # the caller sees the short read


def test_a_filesystem_without_direct_io_gets_buffered_writes(tmp_path, monkeypatch):
    # Stand-in at the OS boundary: open(2) answering EINVAL to O_DIRECT, as FUSE mounts do.
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    data = os.urandom(ODD)
    dest = empty_file(tmp_path / "f", ODD)
    with sink.PartFile(dest) as into:
        assert not into.is_direct
        assert sink.receive(StreamingBody(io.BytesIO(data), ODD), ODD, into, 0) == ODD
    assert dest.read_bytes() == data


def test_a_device_refusing_the_alignment_falls_back_to_buffered_writes(tmp_path, monkeypatch):
    # Stand-in at the OS boundary: a device whose logical block is bigger than 4 KiB refuses the direct
    # write with EINVAL; the rest of the file is written through the page cache, nothing lost.
    data = os.urandom(ODD)
    dest = empty_file(tmp_path / "f", ODD)
    real_pwrite = os.pwrite

    def refusing(fd, view, position):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, view, position)

    monkeypatch.setattr(os, "pwrite", refusing)
    with sink.PartFile(dest) as into:
        assert into.is_direct
        assert sink.receive(StreamingBody(io.BytesIO(data), ODD), ODD, into, 0) == ODD
        assert not into.is_direct
    assert dest.read_bytes() == data


def test_a_pulled_movie_is_on_disk_not_in_memory(cli_env, s3, tmp_path):
    # A pull of terabytes must not fill the instance's memory with dirty pages Scipion's jobs need.
    src = tmp_path / "movies"
    make_movie(src / "a.tif", 9 * MiB + 5, seed=1)
    make_movie(src / "b.tif", 6 * MiB, seed=2)
    code, out = cli_json(cli_env, "data", "push", str(src), "s3://lab-movies/s", "--create-bucket",
                         "--part-size-mb", "5")  # fmt: skip
    assert code == 0, out
    dest = tmp_path / "back"
    code, out = cli_json(cli_env, "data", "pull", "s3://lab-movies/s", str(dest), "--part-size-mb", "5")
    assert code == 0 and out["failed"] == {} and out["unverified"] == [], out
    for name in ("a.tif", "b.tif"):
        assert cached_bytes(dest / name) <= sink.ALIGN, name  # the file's unaligned tail at most
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    assert transfer.PARTIAL_SUFFIX not in "".join(p.name for p in dest.iterdir())


def test_the_receive_buffer_is_aligned_and_safe_across_fork():
    # open(2) NOTES: O_DIRECT I/O into a private mapping while the process forks may corrupt data; the
    # agent runs programs (fork) while it pulls. The kernel's own map of this process says which it is.
    buffer = sink.worker_buffer()
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    assert address % sink.ALIGN == 0 and len(buffer) % sink.ALIGN == 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end:
            assert perms.endswith("s"), line  # shared, not private ('p')
            break
    else:
        raise AssertionError("the buffer is in no mapping of this process")
    assert sink.worker_buffer() is buffer  # one per thread, reused


def test_the_copy_path_gives_its_connection_back_too(s3, tmp_path):
    # A body botocore wraps (here: its check of the answer's checksum, asked with ChecksumMode) is read
    # through botocore; read to its end, its connection goes back to the pool for the next GET.
    src = make_movie(tmp_path / "movie.tif", ODD, seed=7)
    s3.create_bucket(Bucket="sink", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.upload_file(str(src), "sink", "movie.tif", ExtraArgs={"ChecksumAlgorithm": "CRC64NVME"})
    client = boto3.client("s3")
    new_connections = []
    real_new_conn = urllib3.connectionpool.HTTPConnectionPool._new_conn

    def counted(pool):
        new_connections.append(pool)
        return real_new_conn(pool)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(urllib3.connectionpool.HTTPConnectionPool, "_new_conn", counted)
        for n in range(2):
            dest = empty_file(tmp_path / f"back{n}.tif", ODD)
            body = client.get_object(Bucket="sink", Key="movie.tif", ChecksumMode="ENABLED")["Body"]
            assert sink._socket_reader(body, False) is None  # botocore's checksum-checking body: copied
            with sink.PartFile(dest) as into:
                assert sink.receive(body, ODD, into, 0) == ODD
            assert dest.read_bytes() == src.read_bytes()
    assert len(new_connections) == 1


def test_a_checking_body_is_read_from_the_socket_when_the_caller_checks_the_same_checksum(s3, tmp_path):
    # A pull's one-part GET asks for the object's checksum (ChecksumMode), so botocore wraps the body to check
    # it; the Puller computes that same CRC64NVME as the bytes arrive and compares it, so the body is read
    # from the socket and botocore's second pass over the bytes is left out.
    src = make_movie(tmp_path / "movie.tif", ODD, seed=8)
    s3.create_bucket(Bucket="sink", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.upload_file(str(src), "sink", "movie.tif", ExtraArgs={"ChecksumAlgorithm": "CRC64NVME"})
    client = boto3.client("s3", config=transfer.client_config())
    answer = client.get_object(Bucket="sink", Key="movie.tif", ChecksumMode="ENABLED")
    body = answer["Body"]
    assert type(body) is StreamingChecksumBody and sink._socket_reader(body, True) is not None
    dest = empty_file(tmp_path / "back.tif", ODD)
    crc = sums.Crc64()
    with sink.PartFile(dest) as into:
        assert sink.receive(body, ODD, into, 0, crc, checked=True) == ODD
    assert sums.b64(crc.digest()) == answer["ChecksumCRC64NVME"] == sums.file_checksum(src, None, False)
    assert dest.read_bytes() == src.read_bytes()
