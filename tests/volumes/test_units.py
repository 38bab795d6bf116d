"""Pure pieces: EBS ids from NVMe serials and udev links, mountpoint rules, fio's JSON status stream."""

import io
import os

import pytest

from agent.errors import ApiError
from agent.volumes import blockdev, prewarm
from agent.volumes.mounts import check_mountpoint


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        ("vol0123456789abcdef0", "vol-0123456789abcdef0"),
        ("vol-0123456789abcdef0", "vol-0123456789abcdef0"),
        ("vol12345678", "vol-12345678"),
        ("AWS1234567890ABCDEF", None),  # instance store NVMe: no volume id
        ("", None),
        (None, None),
    ],
)
def test_volume_id_from_nvme_serial(serial, expected):
    assert blockdev.volume_id_from_serial(serial) == expected


def test_volume_ids_from_by_id_links(tmp_path):
    (tmp_path / "nvme1n1").touch()
    (tmp_path / "nvme1n1p1").touch()
    os.symlink(tmp_path / "nvme1n1", tmp_path / "nvme-Amazon_Elastic_Block_Store_vol0abcdef1234567890")
    os.symlink(
        tmp_path / "nvme1n1p1", tmp_path / "nvme-Amazon_Elastic_Block_Store_vol0abcdef1234567890-part1"
    )
    os.symlink(tmp_path / "nvme1n1", tmp_path / "nvme-nvme.1d0f-766f6c30-part9")
    assert blockdev.volume_ids_by_kname(tmp_path) == {"nvme1n1": "vol-0abcdef1234567890"}


@pytest.mark.parametrize("good", ["/data", "/data/project1", "/mnt/a/b"])
def test_mountpoints_under_the_roots_pass(good):
    assert str(check_mountpoint(good, ("/data", "/mnt"))) == good


@pytest.mark.parametrize("bad", ["/", "/etc", "/data/../etc", "/datax", "data", "", None, 5, "/mnt/a\nb"])
def test_mountpoints_elsewhere_are_400(bad):
    with pytest.raises(ApiError) as caught:
        check_mountpoint(bad, ("/data", "/mnt"))
    assert caught.value.status == 400


def test_fio_status_stream_is_parsed_into_byte_counts():
    stream = io.StringIO(
        "fio: a warning line\n"
        '{\n  "jobs" : [ { "read" : { "io_bytes" : 1048576 } } ]\n}\n'
        '{\n  "jobs" : [ { "read" : { "io_bytes" : 3145728 } } ]\n}\n'
        "{\n  broken\n}\n"
    )
    assert [prewarm.read_bytes(d) for d in prewarm.json_documents(stream)] == [1048576, 3145728]


def test_fio_command_is_read_only_and_as_aws_documents():
    argv = prewarm.fio_argv("/dev/nvme1n1", 0, 1 << 30, rate_bytes_s=125_000_000)
    for flag in (
        "--rw=read",
        "--bs=1048576",
        "--iodepth=32",
        "--ioengine=libaio",
        "--direct=1",
        "--readonly",
    ):
        assert flag in argv
    assert "--rate=125000000" in argv and "--status-interval=1" in argv
    assert not any(a.startswith(("--rw=write", "--rw=rw", "--verify", "--trim")) for a in argv)


def test_a_missing_tool_is_a_clear_503(api, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    response = api.get("/v1/volumes")
    assert response.status_code == 503
    assert "lsblk" in response.json["error"] and "not installed" in response.json["error"]


def test_replace_keeps_mode_and_a_backup_of_the_old_file(tmp_path):
    from agent.volumes import fstab

    path = tmp_path / "fstab"
    old = f"tmpfs {tmp_path} tmpfs defaults 0 0\n"
    path.write_text(old)
    path.chmod(0o644)
    new = old + f"tmpfs {tmp_path} tmpfs ro 0 0\n"
    fstab.replace(path, new)
    assert path.read_text() == new
    assert (path.stat().st_mode & 0o777) == 0o644
    assert (tmp_path / "fstab.scipioncloud.bak").read_text() == old


def test_a_jobs_rate_is_measured_over_half_a_second_or_more():
    job = prewarm.Job("j", "vol", "id", "/dev/x", size=100_000_000, logical_block_size=512, volume_id=None)
    job.rate_window = (10.0, 0)
    job.advance(1_000_000, 10.2)  # too soon to say
    assert job.done == 1_000_000 and job.mb_s is None
    job.advance(25_000_000, 10.5)
    assert job.mb_s == 50.0 and job.rate_window == (10.5, 25_000_000)
    job.advance(30_000_000, 10.9)  # the next window starts where the last ended
    assert job.mb_s == 50.0
    job.advance(55_000_000, 11.5)
    assert job.mb_s == 30.0 and job.to_json()["eta_s"] is None  # queued: no ETA
