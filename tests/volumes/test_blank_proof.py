"""format=if-blank formats only a device proven blank: no signature, zeros at the head, the tail and the
samples between, and (EBS) a volume not created from a snapshot. Real loop devices; AWS is the moto server
on 127.0.0.1 (real boto3 DescribeVolumes); the NVMe by-id link udev would make is a link in tmp."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import boto3
import pytest

from agent.volumes import blank, blockdev, fstab
from tests.volumes.conftest import checksum, needs_root, sh

MiB = 1024 * 1024


def write_at(device: str, offset: int, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_the_samples_cover_head_tail_and_every_spacing_of_a_1_tib_volume():
    size = 1024**4
    plan = blank.ranges(size)
    assert plan[0] == (0, blank.CHUNK)
    assert sum(length for offset, length in plan if offset < blank.HEAD) == blank.HEAD
    assert max(offset + length for offset, length in plan) == size
    assert sum(length for offset, length in plan if offset >= size - blank.TAIL) >= blank.TAIL
    middle = sorted(o for o, length in plan if length == blank.SAMPLE)
    gaps = [b - a for a, b in itertools.pairwise(middle)]
    assert len(middle) == blank.SAMPLES and max(gaps) <= 512 * MiB + blank.ALIGN
    assert all(o % blank.ALIGN == 0 for o, _ in plan)
    assert sum(length for _, length in plan) == 160 * MiB and len(plan) == 2056
    # A small device is read whole.
    assert sum(length for _, length in blank.ranges(64 * MiB)) == 64 * MiB


def hide_data(device: str, where: str) -> None:
    size = int(sh("blockdev", "--getsize64", device))
    if where == "middle":
        write_at(device, size // 2 + 12345 * 512, os.urandom(4 * MiB))
    elif where == "near-end":
        write_at(device, size - 3 * MiB, os.urandom(MiB))
    elif where in ("ext4-first-mib-zeroed", "xfs-first-mib-zeroed"):
        sh(f"mkfs.{where.split('-')[0]}", "-q", device)
        write_at(device, 0, bytes(MiB))


@pytest.mark.integration
@pytest.mark.root
@needs_root
@pytest.mark.parametrize("where", ["middle", "near-end", "ext4-first-mib-zeroed", "xfs-first-mib-zeroed"])
def test_data_without_a_signature_is_refused_and_left_untouched(api, loops, tmp_path, where):
    device = loops(512)
    hide_data(device, where)
    assert subprocess.run(["blkid", "-p", device], check=False).returncode == 2  # no signature left
    before = checksum(device)
    mountpoint = tmp_path / "mnt" / "data"
    response = api.post(
        f"/v1/volumes/{Path(device).name}/mount", {"mountpoint": str(mountpoint), "format": "if-blank"}
    )
    assert response.status_code == 409, response.json
    assert "non-zero bytes" in response.json["error"] and "untouched" in response.json["error"]
    assert checksum(device) == before
    assert not mountpoint.exists()
    assert fstab.agent_entries((tmp_path / "fstab").read_text()) == []


@pytest.mark.integration
@pytest.mark.root
@needs_root
def test_mkfs_does_not_discard(api, loops, tmp_path):
    """A discard (TRIM) on a loop device punches holes in its backing file; mkfs must not send one."""
    device = loops(64)
    backing = Path(sh("losetup", "-n", "-O", "BACK-FILE", device).strip())
    with open(backing, "r+b") as handle:  # allocated zeros: blank, but every block really stored
        for _ in range(64):
            handle.write(bytes(MiB))
        handle.flush()
        os.fsync(handle.fileno())
    allocated = os.stat(backing).st_blocks * 512
    assert allocated >= 60 * MiB
    response = api.post(
        f"/v1/volumes/{Path(device).name}/mount",
        {"mountpoint": str(tmp_path / "mnt" / "d"), "format": "if-blank"},
    )
    assert response.status_code == 200, response.json
    assert os.stat(backing).st_blocks * 512 >= allocated - MiB  # nothing was punched out


@pytest.fixture
def ebs_link(tmp_path, monkeypatch):
    """link(device, volume_id): the /dev/disk/by-id link udev makes for an EBS NVMe device."""
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    real = blockdev.volume_ids_by_kname
    monkeypatch.setattr(blockdev, "volume_ids_by_kname", lambda: real(by_id))

    def link(device: str, volume_id: str) -> None:
        name = "nvme-Amazon_Elastic_Block_Store_" + volume_id.replace("-", "")
        (by_id / name).symlink_to(device)

    return link


def moto_volume(snapshot: bool) -> str:
    ec2 = boto3.client("ec2")
    kwargs = {"AvailabilityZone": "eu-west-1a", "Size": 1}
    if snapshot:
        source = ec2.create_volume(AvailabilityZone="eu-west-1a", Size=1)["VolumeId"]
        kwargs["SnapshotId"] = ec2.create_snapshot(VolumeId=source)["SnapshotId"]
    return ec2.create_volume(**kwargs)["VolumeId"]


@pytest.mark.integration
@pytest.mark.root
@needs_root
def test_a_volume_restored_from_a_snapshot_is_never_formatted(api, loops, tmp_path, aws_env, ebs_link):
    """Raw data that the samples miss: only AWS's SnapshotId can tell, and it does."""
    device = loops(512)
    plan = blank.ranges(512 * MiB)
    _, first_sample_end = plan[4][0], plan[4][0] + plan[4][1]
    hidden = first_sample_end + 4096  # between two samples
    assert all(not (o <= hidden < o + n) for o, n in plan)
    write_at(device, hidden, b"raw micrograph bytes" * 100)
    volume = moto_volume(snapshot=True)
    ebs_link(device, volume)
    before = checksum(device)
    listed = {v["name"]: v for v in api.get("/v1/volumes").json["volumes"]}
    assert listed[Path(device).name]["volume_id"] == volume
    response = api.post(
        f"/v1/volumes/{volume}/mount", {"mountpoint": str(tmp_path / "mnt" / "s"), "format": "if-blank"}
    )
    assert response.status_code == 409, response.json
    assert "snap-" in response.json["error"] and "untouched" in response.json["error"]
    assert checksum(device) == before


@pytest.mark.integration
@pytest.mark.root
@needs_root
def test_an_empty_ebs_volume_is_formatted(api, loops, tmp_path, aws_env, ebs_link):
    device = loops(64)
    volume = moto_volume(snapshot=False)
    ebs_link(device, volume)
    response = api.post(
        f"/v1/volumes/{volume}/mount", {"mountpoint": str(tmp_path / "mnt" / "e"), "format": "if-blank"}
    )
    assert response.status_code == 200, response.json
    assert response.json["formatted"] is True


@pytest.mark.integration
@pytest.mark.root
@needs_root
def test_without_aws_an_ebs_volume_is_refused_unless_configured(
    loops, tmp_path, config_dict, ebs_link, monkeypatch
):
    from agent.app import create_app
    from agent.config import from_dict
    from tests.conftest import TOKEN

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    device = loops(64)
    ebs_link(device, "vol-0123456789abcdef0")
    body = {"mountpoint": str(tmp_path / "mnt" / "u"), "format": "if-blank"}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    client = create_app(from_dict(config_dict), token=TOKEN).test_client()
    refused = client.post("/v1/volumes/vol-0123456789abcdef0/mount", json=body, headers=headers)
    assert refused.status_code == 409 and "format_unverified_ebs" in refused.json["error"]
    assert subprocess.run(["blkid", "-p", device], check=False).returncode == 2
    config_dict["storage"]["format_unverified_ebs"] = True
    client = create_app(from_dict(config_dict), token=TOKEN).test_client()
    allowed = client.post("/v1/volumes/vol-0123456789abcdef0/mount", json=body, headers=headers)
    assert allowed.status_code == 200, allowed.json
