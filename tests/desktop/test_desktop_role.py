"""roles/desktop for real inside the disposable Debian 12 root filesystem, with TurboVNC and VirtualGL from
the local signed vendor apt repository (their real package names), then sysprep: a second run changes
nothing and the image holds no VNC password, TLS key or token."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.support import hygiene, image_session, rootfs
from tests.support.desktop import DesktopStack, exec_start, render, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.root]
PLAYBOOK = REPO / "tests/roles/desktop.yml"
ROLE = REPO / "roles/desktop"
SECRETS = [
    "home/ubuntu/.vnc/passwd",
    "etc/scipioncloud/desktop.htpasswd",
    "etc/scipioncloud/tls/desktop.key",
    "etc/scipioncloud/tls/desktop.crt",
    "root/scipioncloud-desktop.txt",
    "etc/nginx/scipioncloud-agent-auth.conf",
    "etc/scipioncloud/tls/desktop.names",
]


@pytest.fixture(scope="module")
def vnc_repo(turbovnc_apt_repo):
    return turbovnc_apt_repo


@pytest.fixture(scope="module")
def vgl_repo(virtualgl_apt_repo):
    return virtualgl_apt_repo


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, rootfs_tarball, vnc_repo, vgl_repo):
    with rootfs.disposable(tmp_path_factory.mktemp("desktop-role"), rootfs_tarball) as root:
        extra = {
            "test_turbovnc_url": vnc_repo.url,
            "test_turbovnc_key": vnc_repo.key_url,
            "test_virtualgl_url": vgl_repo.url,
            "test_virtualgl_key": vgl_repo.key_url,
        }
        env = {"ANSIBLE_ROLES_PATH": str(REPO / "roles")}
        first = rootfs.run_playbook(root, PLAYBOOK, extra_vars=extra, env=env)
        second = rootfs.run_playbook(root, PLAYBOOK, extra_vars=extra, env=env) if first.rc == 0 else None
        yield root, first, second


def test_role_installs_the_desktop(provisioned, vnc_repo):
    root, first, _ = provisioned
    assert first.rc == 0, first.summary()
    # TurboVNC and VirtualGL came from the vendor repository, pinned
    assert (root / "opt/TurboVNC/bin/Xvnc").exists() and (root / "opt/VirtualGL/bin/vglrun").exists()
    # upstream's VERSION-BUILD (release/deb-control.in), the newer of the two releases the repository offers
    assert any("turbovnc_3.3-20260206" in line for line in vnc_repo.requests), vnc_repo.requests
    assert "Pin: version 3.3-*" in (root / "etc/apt/preferences.d/scipioncloud-turbovnc").read_text()
    assert vnc_repo.url in (root / "etc/apt/sources.list.d/turbovnc.sources").read_text()
    status = rootfs.run_in_root(root, "dpkg-query", "-W", "-f=${Version}", "turbovnc")
    assert status.stdout == "3.3-20260206"
    vgl = rootfs.run_in_root(root, "dpkg-query", "-W", "-f=${Version}", "virtualgl")
    assert vgl.stdout == "3.1.4-20251007"
    # vglserver_config gave the GPU devices to vglusers; vglusers holds exactly the desktop user here (no
    # driver, so no nvidia-persistenced account)
    group = rootfs.run_in_root(root, "getent", "group", "vglusers").stdout.strip().split(":")
    assert group[3] == "ubuntu", group
    modprobe = (root / "etc/modprobe.d/virtualgl.conf").read_text()
    assert f"NVreg_DeviceFileGID={group[2]} NVreg_DeviceFileMode=0660" in modprobe
    # the session script is the role's file; its settings point at TurboVNC's Xvnc on localhost
    session = root / "usr/local/libexec/scipioncloud/desktop-session"
    assert session.read_bytes() == (ROLE / "files/scipioncloud-desktop-session").read_bytes()
    assert os.access(session, os.X_OK)
    env = (root / "etc/scipioncloud/desktop.env").read_text()
    assert "DESKTOP_XVNC=/opt/TurboVNC/bin/Xvnc" in env and "-localhost" in env
    assert "-maxauthfails 0" in env  # nginx's password is the gate: no per-address lockout in Xvnc
    assert "DESKTOP_VNC_PORT=5901" in env and 'DESKTOP_SESSION_CMD="startxfce4"' in env
    # desktop and web pieces from the distribution
    for binary in ("usr/bin/startxfce4", "usr/bin/websockify", "usr/sbin/nginx", "usr/share/novnc/vnc.html"):
        assert (root / binary).exists(), binary
    assert not (root / "usr/bin/light-locker").exists() and not (root / "usr/bin/xscreensaver").exists()
    assert (root / "etc/xdg/autostart/light-locker.desktop").read_text().count("Hidden=true") == 1
    # units enabled at boot by their symlinks (no systemd in a chroot)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("scipioncloud-desktop", "scipioncloud-websockify", "scipioncloud-desktop-firstboot"):
        assert os.readlink(wants / f"{unit}.service") == f"/etc/systemd/system/{unit}.service"
    # nginx serves our site instead of the default one
    assert (root / "etc/nginx/sites-enabled/scipioncloud-desktop").is_symlink()
    assert not (root / "etc/nginx/sites-enabled/default").exists()
    assert "proxy_read_timeout 1d;" in (root / "etc/nginx/sites-available/scipioncloud-desktop").read_text()
    # launchers, and the desktop user may run only the log-out helper as root
    assert (root / "home/ubuntu/Desktop/scipioncloud-logout.desktop").exists()
    scipion = root / "home/ubuntu/Desktop/scipion.desktop"
    assert os.readlink(scipion) == "/usr/share/applications/scipion.desktop"  # role scipion's launcher
    assert "VGL_DISPLAY=egl" in env
    sudoers = root / "etc/sudoers.d/scipioncloud-desktop"
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    assert "NOPASSWD: /usr/local/libexec/scipioncloud/desktop-logout" in sudoers.read_text()
    # no secret at build time, and the role names each one in its per-instance list (sysprep's one list)
    assert [s for s in SECRETS if (root / s).exists()] == []
    assert sorted(hygiene.per_instance_paths(root)["desktop"]) == sorted(f"/{s}" for s in SECRETS)


def test_second_run_changes_nothing(provisioned):
    _, first, second = provisioned
    assert first.rc == 0, first.summary()
    assert second is not None and second.rc == 0 and second.changed == 0, second.summary()


def test_image_holds_no_desktop_secret_after_sysprep(provisioned):
    root, first, _ = provisioned
    assert first.rc == 0, first.summary()
    # As if the image had booted once during the bake: secrets exist, then sysprep must remove them.
    for secret in SECRETS:
        path = root / secret
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("made at first boot\n")
    cleaned = rootfs.run_playbook(root, REPO / "roles/sysprep.yml")
    assert cleaned.rc == 0, cleaned.summary()
    assert [s for s in SECRETS if (root / s).exists()] == []
    assert hygiene.audit(root) == []


def test_version_record_names_turbovnc_and_virtualgl_as_installed(provisioned):
    """Provenance: the image's record (agent/version_info.py, read from outside) says what dpkg says."""
    from agent import version_info

    root, first, _ = provisioned
    assert first.rc == 0, first.summary()
    components = version_info.collect(root)["components"]
    for package in ("turbovnc", "virtualgl"):
        status = rootfs.run_in_root(root, "dpkg-query", "-W", "-f=${Version}", package)
        assert status.returncode == 0 and components[package] == status.stdout


def test_the_user_sees_xfce_and_the_scipion_launcher(provisioned, tmp_path):
    """What a user gets: the image's own session (the role's script, XFCE, TurboVNC's Xvnc, here the
    stand-in's TigerVNC behind TurboVNC's options) started from the provisioned root as the desktop user,
    opened as the user opens it: Chromium, the role's nginx site with first boot's password, websockify and
    the image's noVNC. Runs last in this module: it adds Scipion's launcher."""
    root, first, _ = provisioned
    assert first.rc == 0, first.summary()
    launcher = rootfs.run_playbook(root, REPO / "tests/roles/scipion-launcher.yml")
    assert launcher.rc == 0, launcher.summary()
    shot = tmp_path / "xfce-desktop.png"
    # The web side runs here (nginx needs free ports, not the image's 443): the role's site and units
    # rendered for a temp dir; first boot's password and certificate made by the agent's own code.
    web = DesktopStack(tmp_path / "web")
    web.vars["desktop_novnc_dir"] = str(root / "usr/share/novnc")
    try:
        web.firstboot()
        with image_session.running(root, tmp_path / "session", password=web.password) as session:
            # XFCE's session came up whole: its window manager, panel and desktop, and no error dialog
            deadline = time.monotonic() + 30
            while True:
                windows = session.windows()
                wm = session.window_manager()
                up = '"Xfce4-panel")' in windows and '"Desktop": ("xfdesktop" "Xfdesktop")' in windows
                if (up and wm == "Xfwm4") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            log = f"session log {session.log}:\n{session.log.read_text()[-3000:]}"
            assert up and wm == "Xfwm4", f"window manager {wm!r}; windows:\n{windows}\n{log}"
            titles = re.findall(r'"([^"]*)": \("xfce4-session"', windows)
            assert set(titles) == {"xfce4-session"}, f"xfce4-session shows a dialog: {titles}\n{log}"
            # every program of the X session runs as the desktop user, none as root
            programs = session.processes()
            names = {name for _, _, name in programs}
            for wanted in ("Xtigervnc", "xfce4-session", "xfwm4", "xfce4-panel", "xfdesktop"):
                assert wanted in names, f"{wanted} not running: {programs}"
            assert {uid for _, uid, _ in programs} == {session.uid}, programs

            web.vars["desktop_vnc_port"] = session.port
            unit = render("scipioncloud-websockify.service.j2", web.vars, tmp_path / "websockify.service")
            web.processes.append(subprocess.Popen(exec_start(unit.read_text()), stderr=subprocess.DEVNULL))
            wait_port(web.ws_port)
            web.start_nginx()
            words: list[image_session.Word] = []

            def scipion_label(png):
                words[:] = image_session.ocr_words(png)
                return any(w.text == "Scipion" and w.left < 300 and w.top > 30 for w in words)

            image_session.screenshot(web.novnc_url(web.password), shot, until=scipion_label, login=web.login)
    finally:
        web.stop()
    kept = image_session.keep(shot, "test_desktop_role-xfce-desktop.png")
    # the launcher's own name (Name=Scipion) under its icon on the desktop, not its file name
    labels = [w for w in words if w.text == "Scipion" and w.left < 300 and w.top > 30]
    assert labels, f"no 'Scipion' label on the desktop in {kept}; read: {[w.text for w in words]}"
    assert not [w for w in words if "scipion.desktop" in w.text.lower()], f"{kept} shows the file name"
