"""roles/firstboot's script, rendered with the role's defaults, run inside the disposable root filesystem
against the IMDSv2 stand-in on 127.0.0.1: on EC2 it waits (retrying) for a metadata service that comes up
late, then runs the hooks that read the launch settings; one that never answers fails the unit loudly and
leaves no done-file, so the next boot tries again instead of losing the settings."""

from __future__ import annotations

import threading

import jinja2
import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.support import rootfs
from tests.support.fake_imdsv2 import FakeImdsV2Server

pytestmark = [pytest.mark.integration, pytest.mark.root]
ROLE = REPO / "roles/firstboot"
HOOK = """#!/bin/sh
# test hook: what the agent's user-data hook does first, recorded
imds="$SCIPIONCLOUD_IMDS_URL"
token=$(curl -fsS -m 2 -X PUT "$imds/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
curl -fsS -m 2 -H "X-aws-ec2-metadata-token: $token" "$imds/latest/user-data" > /root/hook-user-data
"""


def install_script(root, wait_s: int) -> dict:
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    defaults.update(firstboot_imds_wait_s=wait_s, ansible_managed="test")
    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)  # noqa: S701 - a shell script
    script = env.from_string((ROLE / "templates/scipioncloud-firstboot.sh.j2").read_text()).render(**defaults)
    path = root / defaults["firstboot_script"].lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    hooks = root / defaults["firstboot_hooks_dir"].lstrip("/")
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "20-test.sh").write_text(HOOK)
    (hooks / "20-test.sh").chmod(0o755)
    return defaults


def run_firstboot(root, defaults, imds_url: str):
    env = ["SCIPIONCLOUD_ON_EC2=1", f"SCIPIONCLOUD_IMDS_URL={imds_url}"]
    return rootfs.run_in_root(root, "env", *env, defaults["firstboot_script"], timeout=120)


def test_firstboot_waits_for_a_late_metadata_service_and_fails_loudly_without_one(tmp_path, rootfs_tarball):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        defaults = install_script(root, wait_s=6)
        done = root / defaults["firstboot_done_file"].lstrip("/")

        # never answers (nothing listens): the unit fails, no hook ran, nothing marked done
        never = run_firstboot(root, defaults, f"http://127.0.0.1:{free_port()}")
        assert never.returncode != 0
        assert "did not answer within 6 s" in never.stderr
        assert not done.exists() and not (root / "root/hook-user-data").exists()

        # comes up 4 s late (the port listens but nobody answers until then): waited for, then the hooks run
        imds = FakeImdsV2Server(user_data=b"#scipioncloud-agent v1\n[idle]\nwindow_min = 45\n")
        late = threading.Timer(4, imds.__enter__)
        late.start()
        try:
            ran = run_firstboot(root, defaults, imds.url)
        finally:
            late.join()
            imds.__exit__(None, None, None)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "instance metadata service reachable" in ran.stdout
        assert (
            root / "root/hook-user-data"
        ).read_text() == "#scipioncloud-agent v1\n[idle]\nwindow_min = 45\n"
        assert done.exists()
