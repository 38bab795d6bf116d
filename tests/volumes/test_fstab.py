"""The agent's fstab lines: one per volume, others' lines untouched, atomic replacement checked by findmnt,
and a crash at every step leaving a valid fstab."""

import os
import subprocess
import sys

import pytest

from agent.volumes import fstab
from tests.volumes.conftest import needs_root, sh

HUMAN = "# written by a person\ntmpfs /scratch tmpfs defaults 0 0\n"


def entry(uuid="0b7c3f9e-1111-4222-8333-944455556666", mountpoint="/data"):
    return fstab.Entry(uuid, mountpoint, "ext4", "vol-0123456789abcdef0")


def test_entry_line_has_uuid_nofail_and_device_timeout():
    text = fstab.with_entry(HUMAN, entry())
    line = text.splitlines()[-1]
    assert line.split() == [
        "UUID=0b7c3f9e-1111-4222-8333-944455556666",
        "/data",
        "ext4",
        "defaults,nofail,x-systemd.device-timeout=10s",
        "0",
        "2",
    ]
    assert text.startswith(HUMAN)


def test_same_volume_twice_leaves_one_line_and_others_untouched():
    once = fstab.with_entry(HUMAN, entry())
    twice = fstab.with_entry(once, entry(mountpoint="/data/other"))
    assert twice.count("UUID=0b7c3f9e") == 1
    assert [e.mountpoint for e in fstab.agent_entries(twice)] == ["/data/other"]
    assert fstab.without(twice, entry().uuid) == HUMAN


def test_only_marked_lines_are_the_agents():
    person = "UUID=0b7c3f9e-1111-4222-8333-944455556666 /mine ext4 defaults 0 2\n"
    assert fstab.agent_entries(person) == []
    assert fstab.without(person, entry().uuid) == person
    # A marker whose next line someone replaced: the marker goes, their line stays.
    edited = f"{fstab.MARKER} vol-0123456789abcdef0 uuid={entry().uuid}\n{person.replace('/mine', '/edited')}"
    edited = edited.replace(f"UUID={entry().uuid}", "LABEL=theirs")
    assert fstab.without(edited, entry().uuid) == "LABEL=theirs /edited ext4 defaults 0 2\n"


def test_spaces_in_mountpoint_are_escaped():
    line = fstab.with_entry("", entry(mountpoint="/data/my data")).splitlines()[-1]
    assert line.split()[1] == "/data/my\\040data"


@pytest.fixture
def formatted(loops, tmp_path):
    """A real ext4 volume (so findmnt can resolve its UUID) and an existing mountpoint folder."""
    device = loops(32)
    sh("mkfs.ext4", "-q", device)
    uuid = sh("blkid", "-p", "-o", "value", "-s", "UUID", device).strip()
    (tmp_path / "mnt" / "vol").mkdir(parents=True)
    return uuid, str(tmp_path / "mnt" / "vol")


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("step", ["temporary-written", "verified", "backup-written", "renamed", "synced"])
def test_crash_at_every_step_leaves_old_or_new_valid_fstab(tmp_path, formatted, step):
    uuid, mountpoint = formatted
    path = tmp_path / "fstab"
    old = f"tmpfs {tmp_path} tmpfs defaults 0 0\n"
    path.write_text(old)
    new = fstab.with_entry(old, fstab.Entry(uuid, mountpoint, "ext4", "loop-test"))
    # A real process that dies (os._exit: no cleanup, no finally) right after `step`.
    code = (
        "import os, sys; from pathlib import Path; from agent.volumes import fstab\n"
        "fstab.replace(Path(sys.argv[1]), sys.argv[2],"
        " step=lambda name: os._exit(9) if name == sys.argv[3] else None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path), new, step], timeout=60, check=False)
    assert result.returncode == 9
    text = path.read_text()
    assert text in (old, new)
    assert text == (new if step in ("renamed", "synced") else old)
    check = subprocess.run(["findmnt", "--verify", "--tab-file", str(path)], capture_output=True, check=False)
    assert check.returncode == 0, check.stdout
    # The next write finishes the job despite the leftovers of the dead one.
    fstab.replace(path, new)
    assert path.read_text() == new
    assert (tmp_path / "fstab.scipioncloud.bak").read_text() in (old, new)


@needs_root
@pytest.mark.root
def test_candidate_that_adds_an_error_is_refused_and_file_kept(tmp_path, formatted):
    uuid, mountpoint = formatted
    path = tmp_path / "fstab"
    old = f"tmpfs {tmp_path} tmpfs defaults 0 0\n"
    path.write_text(old)
    broken = fstab.with_entry(old, fstab.Entry(uuid, str(tmp_path / "missing-folder"), "ext4", "x"))
    with pytest.raises(fstab.FstabError, match="missing-folder"):
        fstab.replace(path, broken)
    assert path.read_text() == old
    assert not list(tmp_path.glob(".fstab.scipioncloud.tmp"))
    fstab.replace(path, fstab.with_entry(old, fstab.Entry(uuid, mountpoint, "ext4", "x")))
    assert fstab.agent_entries(path.read_text())[0].uuid == uuid


@pytest.mark.parametrize("separator", ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_lines_end_at_newline_only(separator):
    """libmount ends a line at "\\n" only: what str.splitlines also splits on stays inside someone's line."""
    uuid = entry().uuid
    marker = f"{fstab.MARKER} vol-0123456789abcdef0 uuid={uuid}"
    hidden = f"# note{separator}{marker}{separator}UUID={uuid} /x ext4 d 0 2"
    text = HUMAN + hidden + "\n"
    assert fstab.agent_entries(text) == []
    assert fstab.without(text, uuid) == text
    # The agent's own line after it is still found and removed, the person's line kept byte for byte.
    mine = fstab.with_entry(text, entry())
    assert [e.mountpoint for e in fstab.agent_entries(mine)] == ["/data"]
    assert fstab.without(mine, uuid) == text


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_new_file_and_backup_keep_mode_and_owner_whatever_the_umask(tmp_path, formatted, umask):
    uuid, mountpoint = formatted
    path = tmp_path / "fstab"
    path.write_text(HUMAN)
    path.chmod(0o640)
    os.chown(path, 0, 65534)  # group nogroup: an owner the agent's own files would not get
    script = (
        "import os, sys; from pathlib import Path; from agent.volumes import fstab\n"
        f"os.umask({umask})\n"
        f"fstab.add(Path(sys.argv[1]), fstab.Entry({uuid!r}, {mountpoint!r}, 'ext4', 'vol-x'))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert fstab.agent_entries(path.read_text())
    for written in (path, tmp_path / "fstab.scipioncloud.bak"):
        info = written.stat()
        assert (oct(info.st_mode & 0o7777), info.st_uid, info.st_gid) == (oct(0o640), 0, 65534), written
