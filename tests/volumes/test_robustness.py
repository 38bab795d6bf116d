"""Odd devices and hostile input on real loop devices: an ambivalent device breaks nothing else, every check
runs before anything changes, no request gets a 500, folders and a new filesystem are usable by the
desktop user under the unit's UMask=0077."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent.volumes import fstab, prewarm
from tests.conftest import VENV_BIN, write_toml
from tests.volumes.conftest import checksum, needs_root, sh

pytestmark = [pytest.mark.integration, pytest.mark.root, needs_root]
MiB = 1024 * 1024


def make_ambivalent(device: str, tmp_path: Path) -> None:
    """ext4 plus an XFS superblock in its unused first sector: `blkid -p` exits 8 (ambivalent)."""
    xfs = tmp_path / "xfs.img"
    with open(xfs, "wb") as handle:
        handle.truncate(320 * MiB)
    sh("mkfs.xfs", "-q", str(xfs))
    sh("mkfs.ext4", "-q", device)
    with open(xfs, "rb") as source, open(device, "r+b") as target:
        target.write(source.read(512))
    xfs.unlink()
    assert subprocess.run(["blkid", "-p", device], capture_output=True, check=False).returncode == 8


def test_an_ambivalent_device_breaks_nothing_else(api, loops, tmp_path, storage, config_dict):
    odd = loops(64)
    make_ambivalent(odd, tmp_path)
    other = loops(32)
    before = checksum(odd)

    listed = api.get("/v1/volumes")
    assert listed.status_code == 200, listed.json
    by_name = {v["name"]: v for v in listed.json["volumes"]}
    assert by_name[Path(odd).name]["state"] == "unknown"
    assert "ambivalent" in by_name[Path(odd).name]["reason"]
    assert by_name[Path(other).name]["state"] == "blank"

    for fmt in ("if-blank", "never"):
        refused = api.post(
            f"/v1/volumes/{Path(odd).name}/mount", {"mountpoint": str(tmp_path / "mnt/odd"), "format": fmt}
        )
        assert refused.status_code == 409 and "untouched" in refused.json["error"], refused.json
    assert checksum(odd) == before

    mounted = api.post(
        f"/v1/volumes/{Path(other).name}/mount",
        {"mountpoint": str(tmp_path / "mnt/ok"), "format": "if-blank"},
    )
    assert mounted.status_code == 200, mounted.json
    assert api.post(f"/v1/volumes/{Path(other).name}/unmount").status_code == 200

    # Pre-warm of the other device, and the resume at start, with the odd one attached.
    manager = prewarm.PrewarmManager(storage, aws_status=lambda volume_id: None)
    from agent.volumes import blockdev

    target = blockdev.find(storage, other)
    manager.store.save(prewarm.Checkpoint(target.identity, target.size, 4 * MiB))
    resumed = manager.resume_all()
    assert [job.device for job in resumed] == [other]
    resumed[0].thread.join(60)
    assert resumed[0].state == "done" and resumed[0].resumed_from == 4 * MiB

    config = write_toml(tmp_path / "agent.toml", config_dict)
    argv = [str(VENV_BIN / "scipioncloud-agent"), "mount", odd, str(tmp_path / "mnt/c")]
    cli = subprocess.run(
        [*argv, "--format", "if-blank", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 1 and "ambivalent" in cli.stderr and "Traceback" not in cli.stderr
    assert checksum(odd) == before


@pytest.mark.parametrize(
    ("mountpoint", "status"),
    [
        ("mnt/data\n", 400),  # trailing newline
        ("mnt/da\nta", 400),
        ("mnt/da\u2028ta", 400),
        ("mnt/da\u2029ta", 400),
        ("mnt/da\x7fta", 400),
        ("mnt/da\x85ta", 400),
        ("mnt/da\rta", 400),
        ("mnt/" + "x" * 256, 400),  # component over 255 bytes
        ("mnt/" + "é" * 128, 400),  # 256 bytes in UTF-8, 128 characters
        ("mnt/a/" * 700, 400),  # over PATH_MAX
        ("mnt/afile/below", 409),  # a file in the way
    ],
)
def test_mountpoints_are_checked_before_anything_changes(api, loops, tmp_path, mountpoint, status):
    device = loops(32)
    (tmp_path / "mnt" / "afile").write_text("x")
    before = sorted(p.name for p in (tmp_path / "mnt").iterdir())
    response = api.post(
        f"/v1/volumes/{Path(device).name}/mount",
        {"mountpoint": str(tmp_path / mountpoint), "format": "if-blank"},
    )
    assert response.status_code == status, response.json
    assert response.json["status"] == status
    assert sorted(p.name for p in (tmp_path / "mnt").iterdir()) == before
    assert subprocess.run(["blkid", "-p", device], check=False).returncode == 2  # not formatted
    assert fstab.agent_entries((tmp_path / "fstab").read_text()) == []


def test_labels_are_matched_whole(api, loops, tmp_path):
    device = loops(32)
    for label in ("data\n", "da ta", "dat\u2028a", 7, ["x"]):
        response = api.post(
            f"/v1/volumes/{Path(device).name}/mount",
            {"mountpoint": str(tmp_path / "mnt/l"), "format": "if-blank", "label": label},
        )
        assert response.status_code == 400, (label, response.json)
    assert subprocess.run(["blkid", "-p", device], check=False).returncode == 2


def test_no_request_gets_a_500(api, volume_app, loops, tmp_path):
    from tests.conftest import TOKEN

    device = Path(loops(32)).name
    inside = str(tmp_path / "mnt" / "a")
    bodies = [
        {"mountpoint": inside, "fstype": ["ext4"]},
        {"mountpoint": inside, "fstype": {"a": 1}},
        {"mountpoint": inside, "format": ["if-blank"]},
        {"mountpoint": inside, "format": None},
        {"mountpoint": 7},
        {"mountpoint": [inside]},
        {"mountpoint": inside, "label": {"x": 1}},
        {"mountpoint": "/" + "\ud800"},
        {"mountpoint": inside + "/\ud800"},
    ]
    for body in bodies:
        response = api.post(f"/v1/volumes/{device}/mount", body)
        assert response.status_code == 400, (body, response.json)
    client = volume_app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    deep = "[" * 30000 + "]" * 30000
    for path in (f"/v1/volumes/{device}/mount", f"/v1/volumes/{device}/prewarm"):
        response = client.post(path, data=deep, headers=headers)
        assert response.status_code == 400 and response.json["status"] == 400, response.json
    long_name = "vol-" + "0" * 5000
    assert api.post(f"/v1/volumes/{long_name}/mount", {"mountpoint": inside}).status_code == 404
    assert api.post(f"/v1/volumes/{long_name}/prewarm").status_code == 404
    assert api.post(f"/v1/volumes/{long_name}/unmount").status_code == 404
    assert api.get("/v1/prewarm/" + "j" * 5000).status_code == 404
    assert subprocess.run(["blkid", "-p", f"/dev/{device}"], check=False).returncode == 2


def test_unmount_refused_by_fstab_check_changes_nothing(api, loops, tmp_path):
    device = Path(loops(32)).name
    mountpoint = tmp_path / "mnt" / "m"
    assert (
        api.post(
            f"/v1/volumes/{device}/mount", {"mountpoint": str(mountpoint), "format": "if-blank"}
        ).status_code
        == 200
    )
    table = tmp_path / "fstab"
    table.write_text(table.read_text() + "this line is broken by hand\n")
    text = table.read_text()
    response = api.post(f"/v1/volumes/{device}/unmount")
    assert response.status_code == 409 and "left mounted" in response.json["error"], response.json
    assert table.read_text() == text
    assert sh("findmnt", "-n", "-o", "TARGET", "--mountpoint", str(mountpoint)).strip() == str(mountpoint)


@pytest.fixture
def public_root():
    """A mount root every user may traverse (pytest's tmp_path is 0700 root); removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="scipioncloud-public-"))
    folder.chmod(0o755)  # the test's point: the desktop user must reach the volume
    yield folder
    subprocess.run(["umount", "-R", str(folder)], check=False, capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def test_folders_and_new_filesystem_are_usable_by_the_desktop_user_under_umask_0077(
    loops, tmp_path, config_dict, public_root
):
    user = pwd.getpwnam("nobody")
    device = loops(32)
    config_dict["storage"]["mount_roots"] = [str(public_root)]
    config_dict["desktop"]["user"] = "nobody"
    config = write_toml(tmp_path / "agent.toml", config_dict)
    mountpoint = public_root / "project" / "run1" / "data"
    argv = [str(VENV_BIN / "scipioncloud-agent"), "mount", device, str(mountpoint), "--format", "if-blank"]
    result = subprocess.run(
        [*argv, "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=lambda: os.umask(0o077),  # the unit's UMask=0077
    )
    try:
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["formatted"] is True
        for folder in (public_root / "project", public_root / "project" / "run1"):
            assert folder.stat().st_mode & 0o777 == 0o755
        assert (mountpoint.stat().st_uid, mountpoint.stat().st_gid) == (user.pw_uid, user.pw_gid)
        as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        as_nobody = subprocess.run(
            [*as_user, "touch", str(mountpoint / "written-by-the-desktop-user")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert as_nobody.returncode == 0, as_nobody.stderr
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)


def test_cli_shows_no_traceback_when_a_tool_is_missing(loops, tmp_path, config_dict):
    device = loops(32)
    config = write_toml(tmp_path / "agent.toml", config_dict)
    env = {**os.environ, "PATH": str(tmp_path / "empty-path")}  # no lsblk, blkid, mkfs...
    for command in (["mount", device, str(tmp_path / "mnt/x"), "--format", "if-blank"], ["prewarm", device]):
        result = subprocess.run(
            [str(VENV_BIN / "scipioncloud-agent"), *command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert "lsblk" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert subprocess.run(["blkid", "-p", device], check=False).returncode == 2


def test_a_broken_fstab_is_found_before_mkfs(api, loops, tmp_path):
    """An edit findmnt would refuse is known before anything is formatted: the 409 leaves the device blank."""
    device = loops(32)
    table = tmp_path / "fstab"
    table.write_text("this line is broken by hand\n")
    response = api.post(
        f"/v1/volumes/{Path(device).name}/mount",
        {"mountpoint": str(tmp_path / "mnt" / "b"), "format": "if-blank"},
    )
    assert response.status_code == 409 and "untouched" in response.json["error"], response.json
    assert subprocess.run(["blkid", "-p", device], check=False).returncode == 2
    assert not (tmp_path / "mnt" / "b").exists()
    assert table.read_text() == "this line is broken by hand\n"


def test_teardown_finds_mounts_at_odd_paths(loops, tmp_path):
    """The fixture's own guard: a mount at a path with U+2029, \\x85 or \\r is found and undone."""
    from tests.volumes.conftest import mounts_under

    device = loops(32)
    sh("mkfs.ext4", "-q", device)
    odd = tmp_path / "mnt" / "da\u2029t\x85a\r b"
    odd.mkdir(parents=True)
    sh("mount", device, str(odd))
    assert mounts_under(tmp_path) == [str(odd)]
