"""The roles of site.yml and sysprep.yml, run for real (without Packer) inside a disposable Debian 12 root
filesystem: what they install, that a second run changes nothing, first-boot secrets, sysprep hygiene."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from agent.token import read_token

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tests.conftest import REPO, free_port
from tests.support import hygiene, roles, rootfs, systemd_boot
from tests.support.fake_imdsv2 import FakeImdsV2Server

pytestmark = [pytest.mark.integration, pytest.mark.root]
SITE = REPO / "roles/site.yml"
SYSPREP = REPO / "roles/sysprep.yml"
DESKTOP_VARS = REPO / "images/scipion-desktop.yml"


def files_of(root) -> set[str]:
    """Every file of the root filesystem, relative, without the kernel's and the runtime's folders."""
    found = set()
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel in ("proc", "sys", "dev", "run", "tmp"):
            dirs[:] = []
            continue
        found |= {os.path.normpath(os.path.join(rel, n)) for n in names}
    return found


def firstboot(root):
    """The first-boot script as the unit runs it; IMDS is a closed loopback port (off EC2)."""
    imds = f"SCIPIONCLOUD_IMDS_URL=http://127.0.0.1:{free_port()}"
    return rootfs.run_in_root(root, "env", imds, "/usr/local/sbin/scipioncloud-firstboot")


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, rootfs_tarball, agent_wheel):
    """One root filesystem with site.yml applied twice: (root, first result, second result)."""
    with rootfs.disposable(tmp_path_factory.mktemp("roles"), rootfs_tarball) as root:
        # the base roles only: the GPU and Scipion roles have their own tests, and the rehearsal runs all
        extra = {"agent_wheel": str(agent_wheel), "scipioncloud_roles": ["common", "agent", "firstboot"]}
        first = rootfs.run_playbook(root, SITE, vars_files=[DESKTOP_VARS], extra_vars=extra)
        second = rootfs.run_playbook(root, SITE, vars_files=[DESKTOP_VARS], extra_vars=extra)
        yield root, first, second


def test_site_configures_the_machine(provisioned):
    root, first, _ = provisioned
    assert first.rc == 0, first.summary()
    # agent: the package in its venv, runnable, with a config the agent itself accepts
    agent = root / "opt/scipioncloud/venv/bin/scipioncloud-agent"
    assert agent.exists()
    assert rootfs.run_in_root(root, "/opt/scipioncloud/venv/bin/scipioncloud-agent", "--help").returncode == 0
    config = tomllib.loads((root / "etc/scipioncloud/agent.toml").read_text())
    assert config["server"]["token_file"] == "/etc/scipioncloud/agent.token"
    assert config["idle"]["action"] == "poweroff"  # from images/scipion-desktop.yml
    from agent.config import from_dict

    assert from_dict(config).storage.mount_roots == ("/data", "/mnt")
    unit = (root / "etc/systemd/system/scipioncloud-agent.service").read_text()
    assert unit.splitlines()[1:] == roles.render("agent", "scipioncloud-agent.service.j2").splitlines()[1:]
    serve = (
        "ExecStart=/opt/scipioncloud/venv/bin/scipioncloud-agent serve --config /etc/scipioncloud/agent.toml"
    )
    assert serve + "\n" in unit
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (
        os.readlink(wants / "scipioncloud-agent.service") == "/etc/systemd/system/scipioncloud-agent.service"
    )
    assert (wants / "scipioncloud-firstboot.service").is_symlink()
    assert (root / "usr/bin/fio").exists()
    units = [f"/etc/systemd/system/scipioncloud-{u}.service" for u in ("agent", "firstboot")]
    verified = rootfs.run_in_root(root, "systemd-analyze", "verify", *units)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # no secret is made at build time
    assert not (root / "etc/scipioncloud/agent.token").exists()
    # common: UTC, unattended upgrades that hold kernel and NVIDIA packages
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Etc/UTC"
    held = (root / "etc/apt/apt.conf.d/51scipioncloud-unattended-upgrades").read_text()
    assert '"^linux-";' in held and '"^nvidia-";' in held and '"^libnvidia-";' in held
    assert 'Unattended-Upgrade "1"' in (root / "etc/apt/apt.conf.d/20auto-upgrades").read_text()
    assert "169.254.169.123" in (root / "etc/systemd/timesyncd.conf.d/50-scipioncloud.conf").read_text()


def test_agent_records_what_is_installed(provisioned):
    """`scipioncloud-agent version-info`, as the bake runs it on the build instance before sysprep."""
    root, *_ = provisioned
    agent = "/opt/scipioncloud/venv/bin/scipioncloud-agent"
    out = "/usr/share/scipioncloud/version-info.json"
    done = rootfs.run_in_root(root, agent, "version-info", "--out", out, "--expect", "scipioncloud_agent")
    assert done.returncode == 0, done.stderr
    info = json.loads((root / out.lstrip("/")).read_text())
    assert info["components"]["scipioncloud_agent"] == "0.1.0"
    fio = rootfs.run_in_root(root, "dpkg-query", "-W", "-f=${Version}", "fio").stdout
    assert info["packages"]["fio"] == fio
    missing = rootfs.run_in_root(root, agent, "version-info", "--expect", "nvidia_driver")
    assert missing.returncode != 0 and "not installed: nvidia_driver" in missing.stderr


def test_second_run_changes_nothing(provisioned):
    _, first, second = provisioned
    assert first.changed > 0, first.summary()
    assert second.rc == 0 and second.changed == 0, second.summary()


def test_firstboot_applies_launch_user_data_to_the_agent_config(provisioned):
    root, *_ = provisioned
    hook = "/etc/scipioncloud/firstboot.d/20-agent-userdata.sh"
    config = root / "etc/scipioncloud/agent.toml"
    before = config.read_text()
    with FakeImdsV2Server(user_data=b"#cloud-config\npackages: [htop]\n") as imds:
        other = rootfs.run_in_root(root, "env", f"SCIPIONCLOUD_IMDS_URL={imds.url}", hook)
    assert other.returncode == 0, other.stderr
    assert config.read_text() == before  # user data of another kind is cloud-init's, not ours
    user_data = b'#scipioncloud-agent v1\n[idle]\naction = "poweroff"\nwindow_min = 60\n'
    with FakeImdsV2Server(user_data=user_data) as imds:
        applied = rootfs.run_in_root(root, "env", f"SCIPIONCLOUD_IMDS_URL={imds.url}", hook)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    settings = tomllib.loads(config.read_text())
    assert settings["idle"]["action"] == "poweroff" and settings["idle"]["window_min"] == 60
    assert settings["server"]["bind"] == "127.0.0.1:9777"  # the image's own keys stay
    config.write_text(before)


def test_firstboot_makes_secrets_once_and_sysprep_removes_them(provisioned):
    root, *_ = provisioned
    before = files_of(root)
    made = firstboot(root)
    assert made.returncode == 0, made.stderr
    token = root / "etc/scipioncloud/agent.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    # made by the agent's own code (`scipioncloud-agent token`, a first-boot hook), in the agent's format
    assert read_token(token) == token.read_text().strip() and len(token.read_text().strip()) >= 43
    assert "agent token made" in made.stdout and token.read_text().strip() not in made.stdout
    # everything first boot made per instance is in a role's per-instance list (sysprep's one list)
    listed = {p for paths in hygiene.per_instance_paths(root).values() for p in paths}
    new = {f"/{p}" for p in files_of(root) - before if not p.startswith("etc/ssh/ssh_host_")}
    assert new and new <= listed, f"made per instance, listed by no role: {sorted(new - listed)}"
    assert (root / "etc/ssh/ssh_host_ed25519_key").exists()
    # the desktop's secrets are the desktop role's (tests/desktop/test_desktop_firstboot.py)
    assert not (root / "etc/scipioncloud/vnc.password").exists()
    assert not (root / "etc/scipioncloud/tls").exists()
    before = token.read_text()
    again = firstboot(root)
    assert again.returncode == 0 and "made" not in again.stdout
    assert token.read_text() == before
    # a user's traces the image must not keep
    ssh = root / "home/ubuntu/.ssh"
    ssh.mkdir(parents=True)
    (ssh / "authorized_keys").write_text("ssh-ed25519 AAAA test\n")
    (root / "root/.bash_history").write_text("export SECRET=1\n")
    # the caches a bake's pip, matplotlib and fontconfig runs leave, next to what the image needs
    caches = [
        "root/.cache/pip/http-v2/a",
        "home/ubuntu/.cache/matplotlib/fontlist-v390.json",
        "home/ubuntu/.cache/fontconfig/x-le64.cache-9",
        "home/ubuntu/.cache/pip/selfcheck/b",
    ]
    kept = ["home/ubuntu/.config/xfce4/panel.xml", "home/ubuntu/.local/bin/a", "home/ubuntu/Desktop/a"]
    for path in caches + kept:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("made during the bake\n")
    audit = hygiene.audit(root)
    assert {"per-user cache /root/.cache", "per-user cache /home/ubuntu/.cache"} <= {
        p.replace(str(root), "") for p in audit
    }, audit

    cleaned = rootfs.run_playbook(root, SYSPREP)
    assert cleaned.rc == 0, cleaned.summary()
    assert hygiene.audit(root) == []
    assert [p for p in caches if (root / p).exists()] == []
    assert [p for p in kept if not (root / p).exists()] == []
    assert [p for p in listed if (root / p.lstrip("/")).exists()] == []


def test_unknown_role_is_refused(tmp_path, rootfs_tarball):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        result = rootfs.run_playbook(root, SITE, extra_vars={"scipioncloud_roles": ["common", "cmomon"]})
    assert result.rc != 0
    assert any("'cmomon', which is not a role" in t for t in result.failed_tasks), result.summary()
    assert result.stats["changed"] == 0


def test_agent_role_without_a_wheel_says_how_to_build_one(tmp_path, rootfs_tarball):
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        result = rootfs.run_playbook(root, SITE, extra_vars={"scipioncloud_roles": ["agent"]})
    assert result.rc != 0
    assert any("pip wheel --no-deps" in t for t in result.failed_tasks), result.summary()


def test_one_desktop_user_for_agent_desktop_and_sysprep(tmp_path, rootfs_tarball):
    """desktop_user set once: the agent manages alice's desktop, the desktop lists alice's VNC password as a
    per-instance secret, and sysprep removes it (and nothing of another user)."""
    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        extra = {"desktop_user": "alice", "agent_venv": "/opt/lab/venv"}
        env = {"ANSIBLE_ROLES_PATH": str(REPO / "roles")}
        playbook = REPO / "tests/roles/shared_settings.yml"
        rendered = rootfs.run_playbook(root, playbook, extra_vars=extra, env=env)
        assert rendered.rc == 0, rendered.summary()
        config = tomllib.loads((root / "etc/scipioncloud/agent.toml").read_text())
        from agent.config import from_dict

        desktop = from_dict(config).desktop
        assert desktop.user == "alice" and str(desktop.passwd_file) == "/home/alice/.vnc/passwd"
        unit = (root / "etc/systemd/system/scipioncloud-agent.service").read_text()
        assert (
            "ExecStart=/opt/lab/venv/bin/scipioncloud-agent serve --config /etc/scipioncloud/agent.toml\n"
            in unit
        )
        hooks = root / "etc/scipioncloud/firstboot.d"
        assert '/opt/lab/venv/bin/scipioncloud-agent" token' in (hooks / "10-agent-token.sh").read_text()
        lists = hygiene.per_instance_paths(root)
        assert "/home/alice/.vnc/passwd" in lists["desktop"]
        assert lists["agent"] == ["/etc/scipioncloud/agent.token"]
        # as if the instance had booted: every listed secret exists, plus bob's own file that is no secret
        for path in [p for paths in lists.values() for p in paths]:
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).write_text("made at first boot\n")
        (root / "home/bob/.vnc").mkdir(parents=True)
        (root / "home/bob/.vnc/passwd").write_text("bob's\n")
        cleaned = rootfs.run_playbook(root, SYSPREP)
        assert cleaned.rc == 0, cleaned.summary()
        assert not (root / "home/alice/.vnc/passwd").exists()
        assert (root / "home/bob/.vnc/passwd").exists()
        assert [p for paths in lists.values() for p in paths if (root / p.lstrip("/")).exists()] == []


def monotonic(machine, unit: str, prop: str) -> int:
    value = machine.show(unit, prop)[prop]
    assert value not in ("", "0"), f"{unit} has no {prop}: it never got there"
    return int(value)


def test_the_image_boots_with_systemd_and_runs_first_boot_before_the_agent(provisioned, tmp_path):
    """A copy of the configured root filesystem booted with its own systemd as PID 1
    (tests/support/systemd_boot.py): first boot runs once, after network-online.target and before the
    agent, which then serves; the machine powers off cleanly."""
    root, first, _ = provisioned
    assert first.rc == 0, first.summary()
    machine_root = tmp_path / "machine"
    subprocess.run(["cp", "-a", "--reflink=auto", str(root), str(machine_root)], check=True)
    systemd_boot.point_imds_at(machine_root, f"http://127.0.0.1:{free_port()}")  # off EC2: a closed port
    with systemd_boot.booted(machine_root, tmp_path / "boot") as machine:
        state = machine.wait_running(180)
        failed = machine.run("systemctl", "--failed", "--no-legend", "--plain").stdout
        firstboot = machine.show("scipioncloud-firstboot.service", "Result", "ActiveState")
        agent = machine.show("scipioncloud-agent.service", "ActiveState", "SubState")
        online = monotonic(machine, "network-online.target", "ActiveEnterTimestampMonotonic")
        firstboot_start = monotonic(
            machine, "scipioncloud-firstboot.service", "ExecMainStartTimestampMonotonic"
        )
        firstboot_end = monotonic(machine, "scipioncloud-firstboot.service", "ExecMainExitTimestampMonotonic")
        agent_start = monotonic(machine, "scipioncloud-agent.service", "ExecMainStartTimestampMonotonic")
        token = machine.run("test", "-s", "/etc/scipioncloud/agent.token").returncode
    console = machine.console()
    assert "Powering off." in console, console[-2000:]
    assert (firstboot["Result"], firstboot["ActiveState"]) == ("success", "active"), console[-3000:]
    assert (agent["ActiveState"], agent["SubState"]) == ("active", "running"), console[-3000:]
    assert online <= firstboot_start < firstboot_end <= agent_start
    assert token == 0  # first boot made the agent's token
    assert "scipioncloud" not in failed, failed
    assert state in ("running", "degraded"), (state, failed)
    assert (machine_root / "var/lib/scipioncloud/firstboot.done").exists()
