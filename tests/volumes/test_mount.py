"""Formatting and mounting real loop devices through the HTTP routes and the CLI: only a device proven
blank is formatted, everything else is refused byte for byte unchanged, fstab stays valid."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from agent.volumes import fstab
from tests.conftest import VENV_BIN, write_toml
from tests.volumes.conftest import checksum, needs_root, sh

pytestmark = [pytest.mark.integration, pytest.mark.root, needs_root]


def findmnt(target: str) -> dict | None:
    out = subprocess.run(
        ["findmnt", "-J", "--mountpoint", target], capture_output=True, text=True, check=False
    )
    return json.loads(out.stdout)["filesystems"][0] if out.returncode == 0 else None


@pytest.mark.parametrize(("fstype", "size_mb"), [("ext4", 64), ("xfs", 320)])
def test_blank_device_ends_formatted_mounted_and_in_fstab(api, loops, tmp_path, fstype, size_mb):
    device = loops(size_mb)
    name = Path(device).name
    listed = {v["name"]: v for v in api.get("/v1/volumes").json["volumes"]}
    assert listed[name]["state"] == "blank" and listed[name]["size"] == size_mb * 1024 * 1024
    mountpoint = str(tmp_path / "mnt" / "data")

    response = api.post(
        f"/v1/volumes/{name}/mount",
        {"mountpoint": mountpoint, "fstype": fstype, "format": "if-blank", "label": "scidata"},
    )
    assert response.status_code == 200, response.json
    assert response.json["formatted"] is True
    uuid = sh("blkid", "-p", "-o", "value", "-s", "UUID", device).strip()
    assert response.json["uuid"] == uuid
    mounted = findmnt(mountpoint)
    assert mounted["source"] == device and mounted["fstype"] == fstype
    assert sh("blkid", "-p", "-o", "value", "-s", "LABEL", device).strip() == "scidata"

    text = (tmp_path / "fstab").read_text()
    lines = [line for line in text.splitlines() if line.startswith("UUID=")]
    assert lines == [f"UUID={uuid} {mountpoint} {fstype} defaults,nofail,x-systemd.device-timeout=10s 0 2"]
    sh("findmnt", "--verify", "--tab-file", str(tmp_path / "fstab"))

    again = api.post(f"/v1/volumes/{name}/mount", {"mountpoint": mountpoint, "format": "if-blank"})
    assert again.status_code == 200 and again.json["formatted"] is False
    assert (tmp_path / "fstab").read_text().count(f"UUID={uuid}") == 1
    listed = {v["name"]: v for v in api.get("/v1/volumes").json["volumes"]}
    assert listed[name]["state"] == "mounted" and listed[name]["mountpoints"] == [mountpoint]
    assert listed[name]["signature"]["TYPE"] == fstype

    Path(mountpoint, "kept.txt").write_text("micrographs")
    gone = api.post(f"/v1/volumes/{name}/unmount")
    assert gone.status_code == 200 and gone.json["unmounted"] == [mountpoint]
    assert findmnt(mountpoint) is None
    assert fstab.agent_entries((tmp_path / "fstab").read_text()) == []
    # Mounting a formatted volume again (format=never) keeps its data: no mkfs.
    back = api.post(f"/v1/volumes/{name}/mount", {"mountpoint": mountpoint})
    assert back.status_code == 200 and back.json["formatted"] is False
    assert Path(mountpoint, "kept.txt").read_text() == "micrographs"


def prepare(device: str, kind: str, tmp_path: Path) -> None:
    if kind in ("ext4", "xfs"):
        sh(f"mkfs.{kind}", "-q", device)
    elif kind == "swap":
        sh("mkswap", device)
    elif kind in ("gpt", "dos"):
        sh("sfdisk", "-q", device, input=f"label: {kind}\n,\n")
    elif kind == "luks":
        key = tmp_path / "key"
        key.write_bytes(os.urandom(32))
        sh(
            "cryptsetup",
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            device,
            str(key),
        )


@pytest.mark.parametrize(
    ("kind", "size_mb", "expected"),
    [
        ("ext4", 32, "ext4"),
        ("xfs", 320, "xfs"),
        ("swap", 32, "swap"),
        ("gpt", 32, "gpt"),
        ("dos", 32, "dos"),
        ("luks", 32, "crypto_LUKS"),
    ],
)
def test_devices_holding_anything_are_refused_unchanged(api, loops, tmp_path, kind, size_mb, expected):
    device = loops(size_mb)
    prepare(device, kind, tmp_path)
    before = checksum(device)
    body = {"mountpoint": str(tmp_path / "mnt" / "x"), "format": "if-blank", "fstype": "ext4"}
    response = api.post(f"/v1/volumes/{Path(device).name}/mount", body)
    assert response.status_code == 409, response.json
    assert expected in json.dumps(response.json["signature"])
    assert "untouched" in response.json["error"]
    assert checksum(device) == before
    assert fstab.agent_entries((tmp_path / "fstab").read_text()) == []
    assert not (tmp_path / "mnt" / "x").exists() or not any((tmp_path / "mnt" / "x").iterdir())
    if kind in ("swap", "gpt", "dos", "luks"):
        # Not a filesystem: refused with format=never too, still unchanged.
        body["format"] = "never"
        assert api.post(f"/v1/volumes/{Path(device).name}/mount", body).status_code == 409
        assert checksum(device) == before


def test_existing_filesystem_is_mounted_as_it_is_with_format_never(api, loops, tmp_path):
    device = loops(32)
    sh("mkfs.ext4", "-q", "-L", "old", device)
    uuid = sh("blkid", "-p", "-o", "value", "-s", "UUID", device).strip()
    refused = api.post(
        f"/v1/volumes/{Path(device).name}/mount",
        {"mountpoint": str(tmp_path / "mnt/o"), "format": "if-blank"},
    )
    assert refused.status_code == 409 and "format=never" in refused.json["error"]
    mounted = api.post(f"/v1/volumes/{Path(device).name}/mount", {"mountpoint": str(tmp_path / "mnt/o")})
    assert mounted.status_code == 200 and mounted.json["formatted"] is False and mounted.json["uuid"] == uuid
    assert sh("blkid", "-p", "-o", "value", "-s", "LABEL", device).strip() == "old"


@pytest.mark.parametrize("kind", ["ext4", "swap", "gpt", "luks"])
def test_blank_proof_rejects_every_signature(storage, loops, tmp_path, kind):
    """The proof itself, asked directly: whatever blkid or wipefs sees is a reason not to format."""
    from agent.volumes import blockdev, signatures

    device = loops(32)
    prepare(device, kind, tmp_path)
    before = checksum(device)
    found = blockdev.find(storage, device)
    assert found.state in ("formatted", "partitioned")
    reasons = signatures.not_blank_reasons(found)
    assert any("blkid" in r for r in reasons) and any("wipefs" in r for r in reasons)
    assert checksum(device) == before


def test_bad_input(api, loops, tmp_path):
    device = Path(loops(32)).name
    inside = str(tmp_path / "mnt" / "a")
    assert api.post("/v1/volumes/vol-0123456789abcdef0/mount", {"mountpoint": inside}).status_code == 404
    assert api.post("/v1/volumes/nosuchdev/prewarm").status_code == 404
    for bad in [
        "/etc/x",
        str(tmp_path / "mnt" / ".." / "escape"),
        "relative/path",
        str(tmp_path / "elsewhere"),
    ]:
        response = api.post(f"/v1/volumes/{device}/mount", {"mountpoint": bad, "format": "if-blank"})
        assert response.status_code == 400, bad
    os.symlink("/etc", tmp_path / "mnt" / "link")
    assert (
        api.post(f"/v1/volumes/{device}/mount", {"mountpoint": str(tmp_path / "mnt/link/x")}).status_code
        == 400
    )
    assert (
        api.post(f"/v1/volumes/{device}/mount", {"mountpoint": inside, "fstype": "ntfs"}).status_code == 400
    )
    assert (
        api.post(f"/v1/volumes/{device}/mount", {"mountpoint": inside, "format": "always"}).status_code == 400
    )
    assert api.post(f"/v1/volumes/{device}/mount", {"mountpoint": inside, "force": True}).status_code == 400
    blank_never = api.post(f"/v1/volumes/{device}/mount", {"mountpoint": inside})
    assert blank_never.status_code == 409 and "format=if-blank" in blank_never.json["error"]
    assert subprocess.run(["blkid", "-p", f"/dev/{device}"], check=False).returncode == 2


def test_nothing_is_formatted_when_the_mount_would_fail(api, loops, tmp_path):
    device = loops(32)
    name = Path(device).name
    used = tmp_path / "mnt" / "used"
    used.mkdir()
    (used / "results.star").write_text("data")
    response = api.post(f"/v1/volumes/{name}/mount", {"mountpoint": str(used), "format": "if-blank"})
    assert response.status_code == 409 and "not an empty" in response.json["error"]
    afile = tmp_path / "mnt" / "afile"
    afile.write_text("x")
    assert (
        api.post(f"/v1/volumes/{name}/mount", {"mountpoint": str(afile), "format": "if-blank"}).status_code
        == 409
    )
    # xfs refuses a 32 MiB device itself: its first line is the message, not its usage text.
    too_small = api.post(
        f"/v1/volumes/{name}/mount",
        {"mountpoint": str(tmp_path / "mnt/x"), "format": "if-blank", "fstype": "xfs"},
    )
    assert too_small.status_code == 409 and "300MB" in too_small.json["error"]
    assert "Usage" not in too_small.json["error"]
    assert subprocess.run(["blkid", "-p", device], check=False).returncode == 2  # still blank
    assert fstab.agent_entries((tmp_path / "fstab").read_text()) == []


def test_the_device_holding_root_is_refused(api, tmp_path):
    """The real `/` of this machine: listed as root when it is a block device, and never touched."""
    source = sh("findmnt", "-n", "-o", "SOURCE", "--mountpoint", "/").strip()
    roots = [v for v in api.get("/v1/volumes").json["volumes"] if v["state"] == "root"]
    if not source.startswith("/dev/"):
        pytest.skip(f"/ is on {source}, not a block device")
    assert roots, f"{source} holds / but is not listed as root"
    name = roots[0]["name"]
    response = api.post(
        f"/v1/volumes/{name}/mount", {"mountpoint": str(tmp_path / "mnt/x"), "format": "if-blank"}
    )
    assert response.status_code == 409 and "root" in response.json["error"]
    assert api.post(f"/v1/volumes/{name}/unmount").status_code == 409
    assert api.post(f"/v1/volumes/{name}/prewarm").status_code == 409


def test_protected_mount_makes_its_device_root(tmp_path, loops, config_dict):
    """storage.protected_mounts: the same rule as for `/`, pointed at a loop device mounted in tmp."""
    from agent.app import create_app
    from agent.config import from_dict
    from tests.conftest import TOKEN

    device = loops(32)
    sh("mkfs.ext4", "-q", device)
    fake_root = tmp_path / "fakeroot"
    fake_root.mkdir()
    sh("mount", device, str(fake_root))
    config_dict["storage"]["protected_mounts"] = [str(fake_root)]
    client = create_app(from_dict(config_dict), token=TOKEN).test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    name = Path(device).name
    listed = {v["name"]: v for v in client.get("/v1/volumes", headers=headers).json["volumes"]}
    assert listed[name]["state"] == "root"
    mount = client.post(
        f"/v1/volumes/{name}/mount", json={"mountpoint": str(tmp_path / "mnt" / "r")}, headers=headers
    )
    assert mount.status_code == 409 and "root" in mount.json["error"]
    assert client.post(f"/v1/volumes/{name}/unmount", headers=headers).status_code == 409
    assert client.post(f"/v1/volumes/{name}/prewarm", headers=headers).status_code == 409
    assert findmnt(str(fake_root))["source"] == device


def test_busy_unmount_names_the_processes(api, loops, tmp_path):
    device = Path(loops(32)).name
    mountpoint = tmp_path / "mnt" / "busy"
    assert (
        api.post(
            f"/v1/volumes/{device}/mount", {"mountpoint": str(mountpoint), "format": "if-blank"}
        ).status_code
        == 200
    )
    holder = subprocess.Popen(["sleep", "60"], cwd=mountpoint)
    try:
        response = api.post(f"/v1/volumes/{device}/unmount")
        assert response.status_code == 409
        assert {"pid": holder.pid, "name": "sleep"}.items() <= response.json["processes"][0].items()
        assert "sleep" in response.json["error"]
        assert findmnt(str(mountpoint)) is not None
        assert fstab.agent_entries((tmp_path / "fstab").read_text())
    finally:
        holder.kill()
        holder.wait()
    assert api.post(f"/v1/volumes/{device}/unmount").status_code == 200


def test_cli_mount_formats_a_blank_device(loops, tmp_path, config_dict):
    device = loops(32)
    config = write_toml(tmp_path / "agent.toml", config_dict)
    mountpoint = str(tmp_path / "mnt" / "cli")
    argv = [
        str(VENV_BIN / "scipioncloud-agent"),
        "mount",
        device,
        mountpoint,
        "--format",
        "if-blank",
        "--config",
        str(config),
        "--json",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["formatted"] is True
    assert findmnt(mountpoint)["source"] == device
    sh("umount", mountpoint)
    sh("wipefs", "-a", device)  # make it hold swap: the CLI must refuse it with a clear message
    sh("mkswap", device)
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1 and "swap" in refused.stderr and "Traceback" not in refused.stderr
