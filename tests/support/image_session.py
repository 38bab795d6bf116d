"""The desktop session of a provisioned root filesystem, run as its unit would run it: the role's own session
script (/usr/local/libexec/scipioncloud/desktop-session) as the desktop user, with the image's VNC server and
XFCE, inside a private mount and PID namespace chrooted into the root. Looked at from here: its X windows
(host xwininfo/xprop with the session's cookie), its processes, and noVNC in Chromium.

    with image_session.running(root, work) as session:   # work: a folder of this test's (logs, cookie)
        session.windows() ; session.processes() ; session.screenshot(out)

What differs from a booted instance: no systemd (User=/PAMName= become setpriv; no logind, so no
XDG_RUNTIME_DIR), the settings file is the role's with a free display and port, and the VNC password is made
here with the image's own vncpasswd (first boot's job on an instance). Everything the session starts lives
in the PID namespace, so ending its first process ends them all, also when the test fails."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from agent.desktop import rfb
from tests.support.desktop import CHROMIUM_FLAGS, free_display
from tests.support.paths import free_port

SESSION = "/usr/local/libexec/scipioncloud/desktop-session"
ENV_FILE = "/etc/scipioncloud/desktop.env"
# PID 1 of the namespace stays root and never execs: the kernel's parent-death signal (unshare
# --kill-child) is cleared when a process changes its user, so the user's session runs as its child.
_NAMESPACE_SCRIPT = """set -e
root="$1"; user="$2"; shift 2
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
chroot "$root" setpriv --reuid="$user" --regid="$user" --init-groups --reset-env "$@" &
wait $!
"""


def _env_value(text: str, name: str) -> str:
    m = re.search(rf"^{name}=\"?([^\"\n]*)\"?$", text, re.M)
    if not m:
        raise ValueError(f"{name} missing from the role's {ENV_FILE}")
    return m.group(1)


@dataclasses.dataclass
class Session:
    root: Path
    work: Path
    user: str
    uid: int
    display: int
    port: int
    password: str
    process: subprocess.Popen
    log: Path

    @property
    def x_env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": f":{self.display}", "XAUTHORITY": str(self.work / "Xauthority")}

    def windows(self) -> str:
        """`xwininfo -root -tree` of the session's display: every window with its name and class."""
        (self.work / "Xauthority").write_bytes((self.root / f"home/{self.user}/.Xauthority").read_bytes())
        out = subprocess.run(
            ["xwininfo", "-root", "-tree"], env=self.x_env, capture_output=True, text=True, timeout=20
        )
        return out.stdout + out.stderr

    def window_manager(self) -> str:
        """The name the running window manager gives itself (EWMH _NET_SUPPORTING_WM_CHECK)."""
        check = subprocess.run(
            ["xprop", "-root", "_NET_SUPPORTING_WM_CHECK"], env=self.x_env, capture_output=True, text=True
        ).stdout
        m = re.search(r"window id # (0x[0-9a-f]+)", check)
        if not m:
            return ""
        name = subprocess.run(
            ["xprop", "-id", m.group(1), "_NET_WM_NAME"], env=self.x_env, capture_output=True, text=True
        ).stdout
        m = re.search(r'= "(.*)"', name)
        return m.group(1) if m else ""

    def processes(self) -> list[tuple[int, int, str]]:
        """(pid, uid, program) of every process whose root is this root filesystem."""
        found = []
        real_root = os.path.realpath(self.root)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry.name}/root") != real_root:
                    continue
                uid = int(Path(f"/proc/{entry.name}/status").read_text().split("\nUid:")[1].split()[0])
                argv0 = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            found.append((int(entry.name), uid, os.path.basename(argv0.split(" ")[0])))
        return found


@contextlib.contextmanager
def running(
    root: Path, work: Path, user: str = "ubuntu", password: str | None = None, timeout: float = 30
) -> Iterator[Session]:
    """The image's desktop session of `user`, up and speaking RFB; everything it started ends on exit.
    `password`: the VNC password (first boot's, when the test made one), else a fresh one."""
    work.mkdir(parents=True, exist_ok=True)
    env_text = (root / ENV_FILE.lstrip("/")).read_text()
    display, port = free_display(), free_port()
    env_text = re.sub(r"^DESKTOP_DISPLAY=.*$", f"DESKTOP_DISPLAY={display}", env_text, flags=re.M)
    env_text = re.sub(r"^DESKTOP_VNC_PORT=.*$", f"DESKTOP_VNC_PORT={port}", env_text, flags=re.M)
    session_env = root / "tmp/scipioncloud-test-desktop.env"
    session_env.write_text(env_text)
    passwd_file = root / _env_value(env_text, "DESKTOP_PASSWD_FILE").lstrip("/")
    vncpasswd = "/opt/TurboVNC/bin/vncpasswd" if "TurboVNC" in _env_value(env_text, "DESKTOP_XVNC") else None
    uid = int(next(line for line in (root / "etc/passwd").read_text().splitlines()
                   if line.startswith(f"{user}:")).split(":")[2])  # fmt: skip
    password = password or secrets.token_hex(4)  # VNC authentication uses eight characters
    made = subprocess.run(
        ["chroot", str(root), vncpasswd or "tigervncpasswd", "-f"],
        input=password.encode(),
        capture_output=True,
        timeout=30,
    )
    if made.returncode != 0 or len(made.stdout) != 8:
        raise RuntimeError(f"the image's vncpasswd -f failed: {made.stderr.decode()}")
    passwd_file.parent.mkdir(parents=True, exist_ok=True)
    passwd_file.write_bytes(made.stdout)
    passwd_file.chmod(0o600)
    os.chown(passwd_file.parent, uid, uid)
    os.chown(passwd_file, uid, uid)

    log = work / "session.log"
    command = f"cd ~ && exec {SESSION} /tmp/scipioncloud-test-desktop.env"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--",
             "sh", "-c", _NAMESPACE_SCRIPT, "sh", str(root), user, "sh", "-c", command],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    session = Session(root, work, user, uid, display, port, password, process, log)
    try:
        if rfb.wait_for_banner(port, timeout) is None:
            raise RuntimeError(f"the image's session never spoke RFB on {port}:\n{log.read_text()[-3000:]}")
        yield session
    finally:
        _end(session)
        x_files = [root / f"tmp/.X{display}-lock", root / f"tmp/.X11-unix/X{display}"]
        for path in (session_env, passwd_file, *x_files):
            path.unlink(missing_ok=True)


def _end(session: Session) -> None:
    """SIGKILL to unshare: its child, PID 1 of the namespace, gets SIGKILL, and all in there with it."""
    with contextlib.suppress(ProcessLookupError):
        session.process.send_signal(signal.SIGKILL)
    session.process.wait(30)
    deadline = time.monotonic() + 20
    while session.processes():
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of the image's session outlived it: {session.processes()}")
        time.sleep(0.1)


def screenshot(
    url: str, out: Path, until=None, timeout: float = 60, login: tuple[str, str] | None = None
) -> Path:
    """noVNC in Chromium (the system's, through Playwright) at the session's size, once it says connected:
    screenshots to `out` again and again until `until(out)` is true or `timeout` passes (XFCE draws its
    icons a moment after its windows appear; on a loaded machine, longer). noVNC's own control bar handle
    is hidden: it floats over the left edge of the desktop, where XFCE puts its icons, and is the browser
    page's, not the desktop's. `login`: what the user types at nginx's password prompt."""
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + timeout
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(
                viewport={"width": 1920, "height": 1080},
                ignore_https_errors=True,
                http_credentials={"username": login[0], "password": login[1]} if login else None,
            )
            page.goto(url)
            page.wait_for_function(
                "document.documentElement.classList.contains('noVNC_connected')", timeout=timeout * 1000
            )
            page.evaluate("document.getElementById('noVNC_control_bar_anchor').style.display = 'none'")
            while True:
                page.wait_for_timeout(500)
                page.screenshot(path=str(out))
                if until is None or until(out) or time.monotonic() > deadline:
                    return out
        finally:
            browser.close()


def keep(png: Path, name: str) -> Path:
    """Where to look at a screenshot after the run: a copy in $SCIPIONCLOUD_ARTIFACTS when it is set (CI's
    artifacts folder), else the screenshot in the test's own temporary folder (nothing outside it is made)."""
    folder = os.environ.get("SCIPIONCLOUD_ARTIFACTS")
    if not folder:
        return png
    Path(folder).mkdir(parents=True, exist_ok=True)
    kept = Path(folder) / name
    shutil.copyfile(png, kept)
    return kept


@dataclasses.dataclass(frozen=True)
class Word:
    text: str
    left: int
    top: int
    width: int
    height: int


def ocr_words(png: Path) -> list[Word]:
    """The words Debian's tesseract reads in a screenshot: greyscale, inverted (XFCE's light labels on a dark
    desktop become dark on light, as tesseract expects) and read as sparse text (icon labels, a panel)."""
    from PIL import Image, ImageOps

    prepared = png.with_suffix(".ocr.png")
    with Image.open(png) as image:
        ImageOps.invert(image.convert("L")).save(prepared)
    out = subprocess.run(
        ["tesseract", str(prepared), "-", "--psm", "11", "tsv"], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(f"tesseract failed: {out.stderr}")
    words = []
    for line in out.stdout.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) == 12 and fields[11].strip() and float(fields[10]) > 0:
            left, top, width, height = map(int, fields[6:10])
            words.append(Word(fields[11].strip(), left, top, width, height))
    return words
