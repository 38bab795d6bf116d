"""roles/firstboot's script with the agent role's real first-boot hooks (`scipioncloud-agent token`, then
`scipioncloud-agent userdata --wait`), installed by the roles inside the disposable root filesystem and run
against the IMDSv2 stand-in on 127.0.0.1: on EC2 the agent waits (retrying) for a metadata service that
comes up late, then applies the launch settings and the later hooks run; one that never answers fails the
unit loudly and leaves no done-file, so the next boot tries again instead of losing the settings."""

from __future__ import annotations

import sys

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tests.conftest import REPO, free_port
from tests.support import rootfs
from tests.support.fake_imdsv2 import FakeImdsV2Server, answering_after

pytestmark = [pytest.mark.integration, pytest.mark.root]
SITE = REPO / "roles/site.yml"
SCRIPT = "/usr/local/sbin/scipioncloud-firstboot"
DONE = "var/lib/scipioncloud/firstboot.done"
WAIT_S = 6
# A hook after the agent's (hooks run in name order): it runs only once the agent's hook has succeeded, and
# records what IMDS then serves.
PROBE = """#!/bin/sh
imds="$SCIPIONCLOUD_IMDS_URL"
token=$(curl -fsS -m 2 -X PUT "$imds/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
curl -fsS -m 2 -H "X-aws-ec2-metadata-token: $token" "$imds/latest/user-data" > /root/hook-user-data
"""


def run_firstboot(root, imds_url: str):
    env = ["SCIPIONCLOUD_ON_EC2=1", f"SCIPIONCLOUD_IMDS_URL={imds_url}"]
    return rootfs.run_in_root(root, "env", *env, SCRIPT, timeout=120)


def test_firstboot_waits_for_a_late_metadata_service_and_fails_loudly_without_one(
    tmp_path, rootfs_tarball, agent_wheel
):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        extra = {
            "agent_wheel": str(agent_wheel),
            "scipioncloud_roles": ["agent", "firstboot"],
            "agent_imds_wait_s": WAIT_S,
            # the first-boot commands need only the package's own dependencies, not the server's extra
            "agent_pip_extras": [],
        }
        provisioned = rootfs.run_playbook(root, SITE, extra_vars=extra)
        assert provisioned.rc == 0, provisioned.summary()
        probe = root / "etc/scipioncloud/firstboot.d/90-probe.sh"
        probe.write_text(PROBE)
        probe.chmod(0o755)
        done, config = root / DONE, root / "etc/scipioncloud/agent.toml"
        before = config.read_text()

        # never answers (nothing listens): the unit fails, no later hook ran, nothing marked done
        never = run_firstboot(root, f"http://127.0.0.1:{free_port()}")
        assert never.returncode != 0
        assert f"did not answer within {WAIT_S} s" in never.stderr
        assert "launch settings are NOT applied" in never.stderr
        assert not done.exists() and not (root / "root/hook-user-data").exists()
        assert config.read_text() == before

        # comes up 4 s late (the port listens but nobody answers until then): waited for, then applied
        imds = FakeImdsV2Server(user_data=b"#scipioncloud-agent v1\n[idle]\nwindow_min = 45\n")
        with answering_after(imds, 4):
            ran = run_firstboot(root, imds.url)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "instance metadata service reachable" in ran.stdout
        assert (
            root / "root/hook-user-data"
        ).read_text() == "#scipioncloud-agent v1\n[idle]\nwindow_min = 45\n"
        assert tomllib.loads(config.read_text())["idle"]["window_min"] == 45
        assert done.exists()
