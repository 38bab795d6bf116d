"""The local vendor apt repository is consumed by real apt: signature checked, versions resolved, packages
that install what the roles expect. apt runs with private state/cache/config folders, never the host's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.aptrepo import FakeVendorAptRepo, turbovnc_packages

pytestmark = pytest.mark.integration


def apt(tmp: Path, repo: FakeVendorAptRepo, *args: str, keyring: Path | None = None):
    """apt-get against only `repo`, with every apt folder inside `tmp` and an empty dpkg status."""
    for sub in (
        "etc/sources.list.d",
        "etc/preferences.d",
        "etc/apt.conf.d",
        "state/lists/partial",
        "cache/archives/partial",
    ):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    (tmp / "status").touch()
    sources = tmp / "etc/sources.list.d/vendor.sources"
    sources.write_text(repo.deb822().replace(str(repo.keyring_path), str(keyring or repo.keyring_path)))
    opts = [
        f"-oDir::Etc={tmp / 'etc'}",
        f"-oDir::Etc::SourceList={tmp / 'etc/none.list'}",
        f"-oDir::Etc::SourceParts={tmp / 'etc/sources.list.d'}",
        f"-oDir::State={tmp / 'state'}",
        f"-oDir::State::status={tmp / 'status'}",
        f"-oDir::Cache={tmp / 'cache'}",
        "-oAPT::Architecture=amd64",
        "-oDebug::NoLocking=1",
        "-oAPT::Sandbox::User=root",
    ]
    return subprocess.run(["apt-get", *opts, *args], capture_output=True, text=True, cwd=tmp, check=False)


def test_apt_verifies_the_signed_release(vendor_apt_repo, tmp_path):
    result = apt(tmp_path, vendor_apt_repo, "update")
    assert result.returncode == 0, result.stderr
    assert "W:" not in result.stderr, result.stderr  # no unsigned/insecure warnings
    assert any("InRelease" in line for line in vendor_apt_repo.requests)


def test_apt_refuses_the_repository_with_another_key(vendor_apt_repo, tmp_path):
    other = FakeVendorAptRepo.build(tmp_path / "other", turbovnc_packages(), suite="any")
    other.stop()
    result = apt(tmp_path / "apt", vendor_apt_repo, "update", keyring=other.keyring_path)
    assert "NO_PUBKEY" in result.stderr or "not signed" in result.stderr, result.stderr


def test_older_branch_needs_a_pin_like_in_nvidias_repository(vendor_apt_repo, tmp_path):
    """Both branches carry `nvidia-driver`; apt's candidate is the newest, so an older branch only resolves
    with an apt pin (what the nvidia_driver role writes)."""
    assert apt(tmp_path, vendor_apt_repo, "update").returncode == 0
    unpinned = apt(tmp_path, vendor_apt_repo, "install", "-s", "--no-install-recommends", "cuda-drivers-570")
    assert unpinned.returncode == 100
    assert "but 580.95.05-1 is to be installed" in unpinned.stdout
    (tmp_path / "etc/preferences.d/nvidia-driver").write_text(
        "Package: nvidia-* libnvidia-* libcuda1 cuda-drivers*\nPin: version 570.*\nPin-Priority: 1001\n"
    )
    result = apt(tmp_path, vendor_apt_repo, "install", "-s", "--no-install-recommends", "cuda-drivers-570")
    assert result.returncode == 0, result.stderr
    assert "Inst nvidia-driver (570.195.03-1" in result.stdout
    assert "Inst nvidia-persistenced (570.195.03-1" in result.stdout
    assert "580." not in result.stdout


def test_packages_install_working_stand_in_tools(vendor_apt_repo, tmp_path):
    assert apt(tmp_path, vendor_apt_repo, "update").returncode == 0
    result = apt(tmp_path, vendor_apt_repo, "download", "cuda-nvcc-12-4", "nvidia-smi=580.95.05-1")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    for deb in tmp_path.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    nvcc = subprocess.run(
        [root / "usr/local/cuda-12.4/bin/nvcc", "--version"], capture_output=True, text=True
    )
    assert nvcc.returncode == 0
    assert "Cuda compilation tools, release 12.4, V12.4.1" in nvcc.stdout
    smi = subprocess.run([root / "usr/bin/nvidia-smi"], capture_output=True, text=True)
    assert (smi.returncode, smi.stdout.strip()) == (9, "No devices were found")
