"""The cloud-init stand-in of the rehearsal (tests/support/cloud_init_boot.py) read by the real cloud-init of
the root filesystem: `cloud-init status` says "running" while the stand-in's stages run, `--wait` keeps
waiting until they finish, then says "done" and exits 0, as roles/common expects. (That the bake's own wait
happened: tests/bake/test_bake_rehearsal.py::test_bake_waited_for_cloud_init.)"""

from __future__ import annotations

import threading

import pytest

from tests.support import rootfs
from tests.support.cloud_init_boot import CloudInitBoot

pytestmark = [pytest.mark.integration, pytest.mark.root]
WAIT_S = 2
# As sshd_target.start(cloud_init=True) does in the build instance's /run, then cloud-init itself.
STATUS = """set -u
mkdir -p /run/cloud-init
ln -s ../../var/lib/cloud/data/status.json /run/cloud-init/status.json
ln -s ../../var/lib/cloud/data/result.json /run/cloud-init/result.json
cloud-init status
timeout 120 cloud-init status --wait
echo "rc=$?"
"""


def test_real_cloud_init_waits_for_the_stand_ins_stages(tmp_path, rootfs_tarball):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        boot, stop = CloudInitBoot(root), threading.Event()
        boot.start()
        finisher = threading.Thread(target=boot.finish_after_waited, args=(WAIT_S, stop), daemon=True)
        finisher.start()
        try:
            done = rootfs.run_in_root(root, "sh", "-c", STATUS, timeout=180)
        finally:
            stop.set()
            finisher.join(10)
    lines = done.stdout.split()
    assert done.stdout.startswith("status: running\n"), done.stdout + done.stderr
    assert lines[-3:] == ["status:", "done", "rc=0"], done.stdout + done.stderr
    assert boot.still_waiting_at_done, boot.times
    assert boot.times["done"] - boot.times["waiter_seen"] >= WAIT_S
    assert 0 <= boot.times["waiter_gone"] - boot.times["done"] < 10, boot.times
