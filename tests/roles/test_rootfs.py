"""The disposable root filesystem harness (tests/support/rootfs.py) with a real playbook: it runs inside the
copy, reports changes for idempotence checks, and leaves no mount on the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import rootfs

pytestmark = [pytest.mark.integration, pytest.mark.root]
PROBE = Path(__file__).with_name("rootfs-probe.yml")


def mounts_under(path: Path) -> list[str]:
    """This namespace's mounts below `path` (other helpers' mounts elsewhere come and go meanwhile)."""
    with open("/proc/self/mountinfo") as f:
        return sorted(p for p in (line.split()[4] for line in f) if p.startswith(str(path)))


def test_host_mirror_reads_deb822_and_one_line_sources(tmp_path):
    deb822 = tmp_path / "a.sources"
    deb822.write_text(
        "Types: deb\n# http://snapshot.example/x\nURIs: http://mirror.example/debian\nSuites: x\n"
    )
    one_line = tmp_path / "b.list"
    one_line.write_text("deb [arch=amd64] http://other.example/debian/ bookworm main\n")
    security = tmp_path / "c.list"
    security.write_text("deb http://deb.debian.org/debian-security bookworm-security main\n")
    assert rootfs.host_mirror([security, deb822, one_line]) == "http://mirror.example/debian"
    assert rootfs.host_mirror([one_line]) == "http://other.example/debian"
    assert rootfs.host_mirror([security, tmp_path / "missing"]) == rootfs.FALLBACK_MIRROR


def test_playbook_runs_inside_the_copy_and_is_idempotent(tmp_path, rootfs_tarball):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        first = rootfs.run_playbook(root, PROBE)
        assert first.rc == 0, first.summary()
        assert first.changed == 1 and first.changed_tasks == ["Write a marker file"], first.summary()
        assert (root / "etc/scipioncloud-probe").read_text() == "Debian 12\n"
        assert not Path("/etc/scipioncloud-probe").exists()
        # the bind mounts existed for the playbook only: /proc was there inside, gone now
        assert not any((root / "proc").iterdir())
        assert mounts_under(tmp_path) == []
        second = rootfs.run_playbook(root, PROBE)
        assert second.rc == 0 and second.changed == 0, second.summary()
        assert (root / "usr/sbin/policy-rc.d").read_text() == rootfs.POLICY_RC_D
        assert rootfs.run_in_root(root, "cat", "/etc/debian_version").stdout.startswith("12.")
    assert not (tmp_path / "rootfs").exists()
    assert mounts_under(tmp_path) == []


def test_failed_task_is_reported(tmp_path, rootfs_tarball):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "- name: Fail\n  hosts: rootfs_targets\n  gather_facts: false\n  tasks:\n"
        "    - name: Run a command that does not exist\n      ansible.builtin.command: /no/such/tool\n"
    )
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        result = rootfs.run_playbook(root, bad)
    assert result.rc != 0
    assert result.failed == 1
    assert result.failed_tasks[0].startswith("Run a command that does not exist")


def test_remove_refuses_a_tree_with_a_mount_below(tmp_path):
    import subprocess

    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    # the mount lives in a throwaway namespace, so the check runs against that namespace's view
    script = (
        f"mount -t tmpfs tmpfs {root}/proc && "
        f'python3 -c \'import sys; sys.path.insert(0, "{Path(__file__).parents[2]}"); '
        f'from tests.support import rootfs; from pathlib import Path; rootfs.remove(Path("{root}"))\''
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "still mounted below it" in result.stderr
    assert (root / "proc").is_dir()
