"""Pre-warm of the used blocks only (agent.volumes.prewarm_ranges) on real ext4 and xfs loop devices: every
block a file occupies is read, free space is not, the device is unchanged, and `prewarm_used_only = false`
reads everything."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from agent.volumes import blockdev, prewarm, prewarm_ranges
from tests.volumes.conftest import checksum, needs_root, sh

pytestmark = [pytest.mark.integration, pytest.mark.root, needs_root]
MiB = 1024 * 1024


def disk_checksum(device: str) -> str:
    """The device's bytes as on disk: its buffer cache may still hold blocks from before the mount."""
    sh("blockdev", "--flushbufs", device)
    return checksum(device)


def file_extents(path: str) -> list[tuple[int, int]]:
    """Physical byte ranges of a file, from filefrag -e (FIEMAP) on the mounted filesystem."""
    out = sh("filefrag", "-e", "-b1", path)
    ranges = []
    for start, end in re.findall(r"^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):", out, re.MULTILINE):
        ranges.append((int(start), int(end) + 1))
    assert ranges, out
    return ranges


def ext4_with_one_movie(loops, tmp_path) -> str:
    """A 256 MiB ext4 loop device holding one 32 MiB movie (about an eighth of it used)."""
    device = loops(size_mb=256)
    sh("mkfs.ext4", "-q", "-F", device)
    mnt = tmp_path / "mnt" / "vol"
    mnt.mkdir(parents=True)
    sh("mount", device, str(mnt))
    (mnt / "movie.tif").write_bytes(os.urandom(32 * MiB))
    sh("umount", str(mnt))
    return device


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_used_blocks_cover_every_file_and_skip_free_space(loops, tmp_path, storage, fstype):
    device = loops(size_mb=512)
    sh(f"mkfs.{fstype}", "-q", *(["-F"] if fstype == "ext4" else ["-f"]), device)
    mnt = tmp_path / "mnt" / "vol"
    mnt.mkdir(parents=True)
    sh("mount", device, str(mnt))
    extents = []
    for i in range(4):  # 25 % full: 128 MiB of files
        path = mnt / f"movie{i}.tif"
        path.write_bytes(os.urandom(32 * MiB))
        os.sync()
        extents += file_extents(str(path))
    sh("umount", str(mnt))
    size = int(sh("blockdev", "--getsize64", device))
    ranges = prewarm_ranges.used_ranges(device, size)
    assert ranges is not None
    for start, end in extents:  # every byte of every file lies in a range that will be read
        assert any(o <= start and end <= o + n for o, n in ranges), (start, end)
    used = sum(n for _o, n in ranges)
    assert 128 * MiB <= used < 0.4 * size

    before = disk_checksum(device)
    found = blockdev.find(dataclasses.replace(storage, prewarm_used_only=True), device)
    manager = prewarm.PrewarmManager(
        dataclasses.replace(storage, prewarm_used_only=True), aws_status=lambda volume_id: None
    )
    job = manager.start_job(found, force=True)
    job.thread.join(120)
    assert job.state == "done", job.error
    assert job.done == job.size == used and "used blocks only" in job.reason
    assert disk_checksum(device) == before  # read-only: the device is unchanged

    full = prewarm.PrewarmManager(
        dataclasses.replace(storage, prewarm_used_only=False), aws_status=lambda volume_id: None
    )
    job = full.start_job(found, force=True)
    job.thread.join(120)
    assert job.state == "done" and job.done == size


def test_unknown_filesystem_reads_everything(loops):
    device = loops(size_mb=16, fill_mb=4)
    assert prewarm_ranges.used_ranges(device, 16 * MiB) is None


def test_merge_bounds_the_number_of_ranges():
    ranges = [(i * 3 * MiB, i * 3 * MiB + 4096) for i in range(2000)]
    merged = prewarm_ranges.merge(ranges, 6000 * MiB)
    assert len(merged) <= prewarm_ranges.MAX_RANGES
    for start, end in ranges:
        assert any(o <= start and end <= o + n for o, n in merged)
    assert all(o % MiB == 0 and n % MiB == 0 for o, n in merged)


def test_read_all_on_request_through_the_route_and_the_cli(api, loops, tmp_path, config_dict):
    """Used blocks by default; `{"read_all": true}` (and `prewarm --all-blocks`) reads every block of the
    same volume, even though the used-blocks read finished, and the device stays unchanged."""
    import json
    import subprocess

    from tests.conftest import VENV_BIN, write_toml
    from tests.volumes.conftest import sectors_read
    from tests.volumes.test_prewarm import wait_for

    size = 256 * MiB
    device = ext4_with_one_movie(loops, tmp_path)
    before, name = disk_checksum(device), device.rsplit("/", 1)[1]

    used = api.post(f"/v1/volumes/{name}/prewarm")
    assert used.status_code == 202, used.json
    job = wait_for(lambda p: api.get(p).json, used.json["id"])
    assert job["read_all"] is False and 32 * MiB <= job["bytes_total"] < size / 4

    assert api.post(f"/v1/volumes/{name}/prewarm", {"read_all": "yes"}).status_code == 400
    read_before = sectors_read(device)
    full = api.post(f"/v1/volumes/{name}/prewarm", {"read_all": True})
    assert full.status_code == 202, full.json  # the used-blocks read being done does not stand for a full one
    job = wait_for(lambda p: api.get(p).json, full.json["id"], timeout=120)
    assert job["read_all"] is True and job["bytes_done"] == job["bytes_total"] == size
    assert (sectors_read(device) - read_before) * 512 >= size
    assert disk_checksum(device) == before

    config = write_toml(tmp_path / "agent.toml", config_dict)
    argv = [str(VENV_BIN / "scipioncloud-agent"), "prewarm", device, "--config", str(config), "--json"]
    cli = subprocess.run([*argv, "--all-blocks", "--force"], capture_output=True, text=True, timeout=180)
    assert cli.returncode == 0, cli.stderr
    job = json.loads(cli.stdout)
    assert job["state"] == "done" and job["read_all"] is True and job["bytes_done"] == size
    plain = json.loads(subprocess.run([*argv, "--force"], capture_output=True, text=True, timeout=180).stdout)
    assert plain["read_all"] is False and plain["bytes_total"] < size / 4


def test_a_checkpoint_counted_in_the_other_mode_starts_over(loops, tmp_path, storage):
    """A full read stopped half-way leaves `done` as a device offset; a used-blocks job must not read it as
    a count of used bytes (that would skip every used block), so it starts from the beginning."""
    device = ext4_with_one_movie(loops, tmp_path)
    used_storage = dataclasses.replace(storage, prewarm_used_only=True)
    found = blockdev.find(used_storage, device)
    manager = prewarm.PrewarmManager(used_storage, aws_status=lambda volume_id: None)
    manager.store.save(prewarm.Checkpoint(found.identity, found.size, found.size // 2, mode="all"))
    job = manager.start_job(found)
    assert job.resumed_from == found.size // 2  # taken from the checkpoint...
    job.thread.join(120)
    assert job.state == "done", job.error
    assert job.resumed_from == 0 and job.done == job.size < found.size / 4  # ...then dropped: all used read
    saved = manager.store.load(found.identity)
    assert saved.mode == "used" and saved.state == "done"
