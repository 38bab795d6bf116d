"""Fixtures for the volume tests: real loop devices on sparse files in the test's tmp dir, an agent config
that manages loop devices, and teardown that unmounts and detaches everything even when a test fails."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from agent.app import create_app
from agent.config import from_dict
from tests.conftest import TOKEN, agent_config_dict

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mkfs and mount")


def sh(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, input=input, timeout=120).stdout


def checksum(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def sectors_read(device: str) -> int:
    """Sectors (512 bytes) read from the device since it was attached: what really left the 'disk'."""
    return int(Path(f"/sys/class/block/{Path(device).name}/stat").read_text().split()[2])


def mounts_under(folder: Path) -> list[str]:
    targets = []
    with open("/proc/self/mountinfo", newline="\n") as handle:  # lines end at \n only
        for line in handle:
            # Fields are separated by single spaces; str.split() would also split at U+2028, \x85...
            # inside a path, and a failing test would leave its mount (and loop device) behind.
            target = line.rstrip("\n").split(" ")[4]
            for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                target = target.replace(escaped, char)
            if target == str(folder) or target.startswith(str(folder) + "/"):
                targets.append(target)
    return targets


@pytest.fixture
def loops(tmp_path):
    """make(size_mb, fill_mb=0, extra_bytes=0) -> '/dev/loopN' on a sparse file of size_mb MiB plus
    extra_bytes, with `fill_mb` of random data at the start. Detached (and its mounts undone) at teardown."""
    made: list[str] = []

    def make(size_mb: int = 64, fill_mb: int = 0, extra_bytes: int = 0) -> str:
        image = tmp_path / f"disk{len(made)}.img"
        with open(image, "wb") as handle:
            if fill_mb:
                handle.write(os.urandom(fill_mb * 1024 * 1024))
            handle.truncate(size_mb * 1024 * 1024 + extra_bytes)
        device = sh("losetup", "--find", "--show", str(image)).strip()
        made.append(device)
        return device

    yield make
    for target in reversed(mounts_under(tmp_path)):
        subprocess.run(["umount", target], check=False, capture_output=True)
        if target in mounts_under(tmp_path):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    for device in made:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


@pytest.fixture
def config_dict(tmp_path) -> dict:
    return agent_config_dict(tmp_path, storage={"include_loop": True})


@pytest.fixture
def storage(config_dict):
    return from_dict(config_dict).storage


@pytest.fixture
def volume_app(config_dict):
    from agent import services

    app = create_app(from_dict(config_dict), token=TOKEN)
    app.config["TESTING"] = True
    yield app
    services.stop_all(app)


@pytest.fixture
def api(volume_app):
    client = volume_app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    class Api:
        def get(self, path):
            return client.get(path, headers=headers)

        def post(self, path, body=None):
            return client.post(path, json=body if body is not None else {}, headers=headers)

        def delete(self, path):
            return client.delete(path, headers=headers)

    return Api()
