"""`scipioncloud provision` over real SSH into the rehearsal root filesystem's sshd on 127.0.0.1: the same
roles/site.yml the bake runs, applied to an "existing machine" the way a facility sysadmin would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tests.support import rootfs, sshd_target

pytestmark = [pytest.mark.integration, pytest.mark.root]


def test_provision_applies_site_yml_over_ssh(tmp_path, rootfs_tarball, agent_wheel):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    overrides = tmp_path / "overrides.yml"
    # the base roles only (the GPU, desktop and Scipion roles have their own tests and run in the rehearsal)
    overrides.write_text(
        f'{{"scipioncloud_roles": ["common", "agent", "firstboot"], "agent_wheel": "{agent_wheel}"}}'
    )
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        target = sshd_target.start(root, tmp_path / "sshd")
        try:
            argv = [
                str(Path(sys.executable).parent / "scipioncloud"), "provision", f"127.0.0.1:{target.port}",
                "--image", "scipion-compute", "--key", str(key), "--vars-file", str(overrides), "--json",
            ]  # fmt: skip
            # a throwaway host key: the sysadmin's known_hosts would hold the real one
            env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False"}
            # from a folder without roles/: the roles ship with the installed package
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        finally:
            target.stop()
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        report = json.loads(done.stdout)  # one JSON document
        assert report["failures"] == []
        assert list(report["hosts"]) == [f"127.0.0.1:{target.port}"]  # HOST:PORT counts once
        # what the roles did inside the machine
        config = tomllib.loads((root / "etc/scipioncloud/agent.toml").read_text())
        assert config["idle"]["action"] == "none"  # images/scipion-compute.yml: the scheduler decides
        assert (root / "opt/scipioncloud/venv/bin/scipioncloud-agent").exists()
        assert (root / "etc/systemd/system/multi-user.target.wants/scipioncloud-agent.service").is_symlink()
