"""roles/nvidia_driver and roles/cuda for real inside a disposable Debian 12 root filesystem, installing from
the local vendor apt repository (FakeVendorAptRepo, standing in for NVIDIA's CUDA repository) with real apt:
signed source, branch pin, holds, unattended-upgrades blacklist, alternatives, profile; a second run changes
nothing; combinations that cannot work stop before anything changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import rootfs

pytestmark = [pytest.mark.integration, pytest.mark.root]
REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "tests/roles"
ENV = {"ANSIBLE_ROLES_PATH": str(REPO / "roles")}


def play(root: Path, playbook: str, repo, **extra) -> rootfs.PlaybookResult:
    extra_vars = {"test_repo_url": repo.url, "test_repo_key": repo.key_url, **extra}
    return rootfs.run_playbook(root, PLAYBOOKS / playbook, extra_vars=extra_vars, env=ENV, timeout=900)


def in_root(root: Path, *argv: str) -> str:
    result = rootfs.run_in_root(root, *argv)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def debug_messages(result: rootfs.PlaybookResult) -> list[str]:
    doc = json.loads(result.stdout[result.stdout.find("{") :])
    return [
        str(task["hosts"]["rootfs"].get("msg", ""))
        for p in doc["plays"]
        for task in p["tasks"]
        if "rootfs" in task["hosts"]
    ]


@pytest.fixture(scope="module")
def gpu_root(tmp_path_factory, rootfs_tarball, vendor_apt_repo):
    """One root with the driver (R580) and CUDA 12.4 + 12.6 (default 12.4), run twice."""
    parent = tmp_path_factory.mktemp("gpu-roles")
    with rootfs.disposable(parent, rootfs_tarball) as root:
        first = play(root, "cuda.yml", vendor_apt_repo)
        second = play(root, "cuda.yml", vendor_apt_repo) if first.rc == 0 else None
        yield root, first, second


def test_first_run_installs_and_second_run_changes_nothing(gpu_root):
    _, first, second = gpu_root
    assert first.rc == 0, first.summary()
    assert "nvidia_driver : Install the driver" in first.changed_tasks
    assert "cuda : Install the toolkits side by side" in first.changed_tasks
    assert second is not None and second.rc == 0, second.summary() if second else "first run failed"
    assert second.changed == 0, second.summary()


def test_driver_comes_from_the_signed_vendor_repository(gpu_root, vendor_apt_repo):
    root, first, _ = gpu_root
    sources = (root / "etc/apt/sources.list.d/nvidia-cuda.sources").read_text()
    assert f"URIs: {vendor_apt_repo.url}" in sources
    assert "Signed-By: /etc/apt/keyrings/nvidia-cuda.asc" in sources
    assert (root / "etc/apt/keyrings/nvidia-cuda.asc").read_text() == (
        vendor_apt_repo.root / vendor_apt_repo.key_name
    ).read_text()
    assert any(line.startswith("GET /pool/nvidia-driver_580") for line in vendor_apt_repo.requests)
    policy = in_root(root, "apt-cache", "policy", "nvidia-driver")
    assert "Installed: 580.95.05-1" in policy
    assert "1001" in policy  # the branch pin
    assert first.rc == 0


def test_driver_and_kernel_are_kept_from_changing(gpu_root):
    root, _, _ = gpu_root
    held = set(in_root(root, "apt-mark", "showhold").split())
    assert {"cuda-drivers-580", "nvidia-driver", "nvidia-kernel-dkms", "libcuda1", "nvidia-smi"} <= held
    pin = (root / "etc/apt/preferences.d/nvidia-driver").read_text()
    assert "Pin: version 580.*" in pin and "Pin-Priority: 1001" in pin
    unattended = (root / "etc/apt/apt.conf.d/51nvidia-driver-no-upgrades").read_text()
    assert '"nvidia-";' in unattended and '"linux-";' in unattended
    # apt itself parses the file: the blacklist is live configuration, not just text
    dump = in_root(root, "apt-config", "dump", "Unattended-Upgrade::Package-Blacklist")
    assert '"libnvidia-"' in dump


def test_nouveau_blacklisted_and_persistenced_enabled(gpu_root):
    root, first, _ = gpu_root
    assert "blacklist nouveau" in (root / "etc/modprobe.d/blacklist-nouveau.conf").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"
    assert wants.is_symlink()
    assert any("nvidia-smi check was skipped" in m for m in debug_messages(first))


def test_first_run_leaves_the_reboot_flag_for_packer(gpu_root):
    _, first, second = gpu_root
    flag = [t for t in first.changed_tasks if "reboot-required flag" in t]
    assert flag, first.changed_tasks  # the driver changed, the reboot was skipped (bake: Packer reboots)
    assert second is not None and not [t for t in second.changed_tasks if "reboot-required" in t]


def test_cuda_toolkits_side_by_side_with_a_default(gpu_root):
    root, _, _ = gpu_root
    query = in_root(root, "update-alternatives", "--query", "cuda")
    assert "Value: /usr/local/cuda-12.4" in query and "Status: manual" in query
    for version in ("12.4", "12.6"):
        out = in_root(root, f"/usr/local/cuda-{version}/bin/nvcc", "--version")
        assert f"release {version}," in out
    login = in_root(root, "bash", "-lc", "command -v nvcc; nvcc --version; echo CUDA_HOME=$CUDA_HOME")
    assert (
        "/usr/local/cuda/bin/nvcc" in login
        and "release 12.4," in login
        and "CUDA_HOME=/usr/local/cuda" in login
    )
    assert "/usr/local/cuda/lib64" in (root / "etc/ld.so.conf.d/cuda.conf").read_text()
    # ldconfig really picked the toolkit's library up through /usr/local/cuda
    assert "libcudart.so.12" in in_root(root, "ldconfig", "-p")


def test_driver_lifecycle_older_branch_switch_and_removal(tmp_path, rootfs_tarball, vendor_apt_repo):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        result = play(root, "nvidia_driver.yml", vendor_apt_repo, test_branch="570",
                      nvidia_driver_version="570.195.03")  # fmt: skip
        assert result.rc == 0, result.summary()
        assert "Pin: version 570.195.03*" in (root / "etc/apt/preferences.d/nvidia-driver").read_text()
        versions = in_root(root, "dpkg-query", "-W", "-f", "${Package} ${Version}\\n")
        assert "nvidia-driver 570.195.03-1" in versions
        assert "nvidia-smi 570.195.03-1" in versions
        assert "580." not in versions
        # a later run with another branch replaces the held driver (apt would not do it by itself)
        switched = play(root, "nvidia_driver.yml", vendor_apt_repo, test_branch="580")
        assert switched.rc == 0, switched.summary()
        assert "nvidia_driver : Purge the installed driver packages" in switched.changed_tasks
        versions = in_root(root, "dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n")
        assert "nvidia-driver 580.95.05-1 hi" in versions  # installed and held
        assert "cuda-drivers-570" not in versions
        assert "cuda-drivers-580" in in_root(root, "apt-mark", "showhold")
        # state absent takes back what the role did
        removed = play(root, "nvidia_driver.yml", vendor_apt_repo, nvidia_driver_state="absent")
        assert removed.rc == 0, removed.summary()
        versions = in_root(root, "dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\\n")
        driver = ("nvidia-", "cuda-drivers", "libcuda")
        left = [line for line in versions.splitlines() if line.startswith(driver) and line.split()[1] == "ii"]
        assert left == []
        assert in_root(root, "apt-mark", "showhold").strip() == ""
        assert not (root / "etc/apt/preferences.d/nvidia-driver").exists()
        assert not (root / "etc/modprobe.d/blacklist-nouveau.conf").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"nvidia_driver_gpu_families": ["g4dn", "p2"]}, "cannot drive p2 (Tesla K80, Kepler)"),
        ({"nvidia_driver_gpu_families": ["g9x"]}, "Unknown GPU instance family 'g9x'"),
        ({"nvidia_driver_version": "570.195.03"}, "the version must lie in the branch"),
        (
            {"nvidia_driver_gpu_families": ["g4dn", "p3"], "nvidia_driver_kernel_modules": "open"},
            "p3 (Tesla V100, Volta) cannot use the open kernel modules",
        ),
        (
            {"nvidia_driver_gpu_families": ["p6-b200"], "nvidia_driver_kernel_modules": "proprietary"},
            "p6-b200 (B200, Blackwell) needs NVIDIA's open kernel modules",
        ),
        ({"nvidia_driver_gpu_families": ["g6f"]}, "runs only NVIDIA's GRID guest driver"),
    ],
)
def test_impossible_combinations_fail_before_changing_anything(
    tmp_path, rootfs_tarball, vendor_apt_repo, extra, message
):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        result = play(root, "nvidia_driver.yml", vendor_apt_repo, **extra)
        assert result.rc != 0
        assert any(message in f for f in result.failed_tasks), result.summary()
        assert result.changed == 0, result.summary()
        assert not (root / "etc/apt/sources.list.d/nvidia-cuda.sources").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"cuda_driver_branch": "570"}, "CUDA 13.0 needs driver branch R580 or newer"),
        ({"cuda_gpu_families": ["g4dn", "g3"]}, "CUDA 13.0 cannot build code for g3 (Tesla M60"),
    ],
)
def test_cuda_refuses_a_toolkit_that_cannot_work(tmp_path, rootfs_tarball, vendor_apt_repo, extra, message):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        versions = {"cuda_versions": ["13.0"], "cuda_default_version": "13.0"}
        result = play(root, "cuda_alone.yml", vendor_apt_repo, **versions, **extra)
        assert result.rc != 0
        assert any(message in f for f in result.failed_tasks), result.summary()
        assert result.changed == 0, result.summary()


@pytest.mark.parametrize(
    ("flavour", "headless", "expected", "installed"),
    [
        (
            "aws",
            False,
            ["linux-modules-nvidia-580-server-aws", "nvidia-driver-580-server"],
            "linux-modules-nvidia-580-server-aws",
        ),
        (
            "generic",
            True,
            ["linux-headers-generic", "nvidia-headless-580-server", "nvidia-utils-580-server"],
            "nvidia-dkms-580-server",
        ),
        (  # open modules: Ubuntu's "-open" names; the precompiled ones carry the kernel's ABI version
            "aws",
            "open",
            ["linux-modules-nvidia-580-server-open-aws", "nvidia-driver-580-server-open"],
            "linux-modules-nvidia-580-server-open-6.8.0-1036-aws",
        ),
    ],
)
def test_ubuntu_archive_choice_precompiled_modules_or_dkms(
    tmp_path, rootfs_tarball, vendor_apt_repo, flavour, headless, expected, installed
):
    """Precompiled signed modules where the archive has them for the kernel flavour, DKMS otherwise."""
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        modules = {"test_kernel_modules": "open"} if headless == "open" else {}
        result = play(root, "nvidia_driver_ubuntu_choice.yml", vendor_apt_repo, test_flavour=flavour,
                      test_headless=headless is True, **modules)  # fmt: skip
        assert result.rc == 0, result.summary()
        assert json.loads((root / "root/nvidia-driver-choice.json").read_text()) == expected
        status = in_root(root, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}", installed)
        assert status.startswith("ii"), status


def test_nvswitch_family_gets_the_fabric_manager_enabled(tmp_path, rootfs_tarball, vendor_apt_repo):
    """p4d (A100, NVSwitch): nvidia-fabricmanager-<branch> installed with the driver, enabled at boot."""
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        result = play(root, "nvidia_driver.yml", vendor_apt_repo, nvidia_driver_gpu_families=["p4d"])
        assert result.rc == 0, result.summary()
        status = in_root(root, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "nvidia-fabricmanager-580")
        assert status[:2] == "hi", status  # installed, and held with the rest of the driver
        wants = root / "etc/systemd/system/multi-user.target.wants/nvidia-fabricmanager.service"
        assert wants.is_symlink(), "nvidia-fabricmanager is not enabled at boot"


def test_version_record_names_the_driver_and_toolkits_dpkg_installed(gpu_root):
    """Provenance: the image's record (agent/version_info.py, read from outside) says what dpkg says."""
    from agent import version_info

    root, first, _ = gpu_root
    assert first.rc == 0, first.summary()
    components = version_info.collect(root)["components"]
    driver = components["nvidia_driver"]
    assert driver["version"] == in_root(root, "dpkg-query", "-W", "-f=${Version}", driver["package"])
    assert set(components["cuda"]) == {"12.4", "12.6"}
    for release, version in components["cuda"].items():
        package = "cuda-toolkit-" + release.replace(".", "-")
        assert version == in_root(root, "dpkg-query", "-W", "-f=${Version}", package)
