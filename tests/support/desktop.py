"""The desktop role's own files, rendered for a test: templates with the role's defaults plus overrides,
units whose ExecStart the tests run, and helpers to look at the desktop through headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from agent.token import ensure_token
from tests.conftest import REPO
from tests.support import processes, roles
from tests.support.paths import VENV_BIN

ROLE = REPO / "roles" / "desktop"
# The colour the test session paints its root window (openbox --startup xsetroot -solid ...).
SESSION_RGB = (0x3A, 0x7D, 0x44)
SESSION_COMMAND = "openbox --startup 'xsetroot -solid rgb:3a/7d/44'"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)  # noqa: S701 - config files, not HTML
    env.filters["to_nice_json"] = lambda value: json.dumps(value, indent=4, sort_keys=False)
    env.filters["bool"] = lambda value: str(value).lower() in ("1", "true", "yes")
    return env


def role_vars(**overrides) -> dict:
    """The desktop role's defaults with `overrides`, every "{{ ... }}" resolved as Ansible would."""
    return roles.defaults("desktop", env=_environment(), **overrides)


def render(template: str, variables: dict, dest: Path) -> Path:
    source = (ROLE / "templates" / template).read_text()
    dest.write_text(_environment().from_string(source).render(**variables))
    return dest


def exec_start(unit_text: str) -> list[str]:
    """The ExecStart command line of a rendered unit, as the tests run it."""
    for line in unit_text.splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.removeprefix("ExecStart="))
    raise ValueError("unit has no ExecStart")


def free_display() -> int:
    """A display in :40..:59 (this area's range) with no X lock and its socket name free."""
    for n in range(40, 60):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("displays :40-:59 are all taken; a previous test left an X server running")


@contextlib.contextmanager
def viewer_process(port: int):
    """Hold one TCP connection to `port` from a separate process, like a viewer's websockify bridge."""
    import sys

    code = (
        "import socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "print('connected', flush=True)\n"
        "sys.stdin.read()\n"
        "s.close()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        if process.stdout.readline().strip() != "connected":
            raise RuntimeError(f"viewer process could not connect to port {port}")
        yield process
    finally:
        process.stdin.close()
        process.wait(10)
        process.stdout.close()


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


@contextlib.contextmanager
def browser_context(login: tuple[str, str] | None) -> Iterator:
    """Headless Chromium (the system's, driven by Playwright; no download) with one context that accepts the
    stack's self-signed certificate and answers nginx's password prompt with `login`, as a user types it.
    The browser is closed on the way out, also when the test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            credentials = {"username": login[0], "password": login[1]} if login else None
            yield browser.new_context(ignore_https_errors=True, http_credentials=credentials)
        finally:
            browser.close()


def log_out_from_the_status_page(page) -> None:
    """Click the status page's "Log out" as a user does (confirming the browser's dialog) and wait until the
    page says a fresh desktop answers."""
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#logout")
    page.wait_for_function(
        "document.getElementById('logout-result').textContent.startsWith('A fresh desktop')",
        timeout=60000,
    )


def screenshot(
    url: str,
    out: Path,
    expect: tuple[int, int, int] | None = None,
    timeout: float = 15.0,
    login: tuple[str, str] | None = None,
) -> Path:
    """noVNC in headless Chromium (driven by Playwright; the system's Chromium, no download): open `url`
    (answering nginx's password prompt with `login`, as a user types it), wait until noVNC says connected,
    then screenshot, again and again until `expect` covers a third of the page or `timeout` passes (a
    fresh session paints its background a moment after Xvnc answers)."""
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=shutil.which("chromium") or "chromium",
            args=CHROMIUM_FLAGS,
            ignore_https_errors=True,
            viewport={"width": 1024, "height": 768},
            http_credentials={"username": login[0], "password": login[1]} if login else None,
        )
        try:
            page = browser.new_page()
            page.goto(url)
            with contextlib.suppress(PlaywrightTimeout):
                page.wait_for_function(
                    "document.documentElement.classList.contains('noVNC_connected')",
                    timeout=max(1000, (deadline - time.monotonic()) * 1000),
                )
            while True:
                page.wait_for_timeout(300)
                page.screenshot(path=str(out))
                if expect is None or colour_fraction(out, expect) > 0.3 or time.monotonic() > deadline:
                    return out
        finally:
            browser.close()


def colour_fraction(png: Path, rgb: tuple[int, int, int], tolerance: int = 6) -> float:
    """Share of the screenshot's pixels within `tolerance` of `rgb`."""
    with Image.open(png) as image:
        data = image.convert("RGB").tobytes()
    r, g, b = rgb
    count = len(data) // 3
    near = sum(
        1
        for i in range(0, len(data), 3)
        if abs(data[i] - r) <= tolerance
        and abs(data[i + 1] - g) <= tolerance
        and abs(data[i + 2] - b) <= tolerance
    )
    return near / count


@dataclass
class WatchedRun:
    returncode: int
    stdout: str
    stderr: str
    programs: set[str]  # the basename of argv[0] of every process seen while the command ran
    leaks: list[str]  # "pid argv0" of each process whose command line held the secret


def run_watching_command_lines(args: list[str], secret: str, timeout: float = 120.0) -> WatchedRun:
    """Run `args` and read every process's /proc/PID/cmdline (what any user may read) again and again until
    it ends: which programs ran, and which of them carried `secret` on their command line."""
    needle = secret.encode()
    programs: set[str] = set()
    leaks: list[str] = []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            finished = process.poll() is not None  # one last scan after the end: nothing is missed
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    raw = Path(entry.path, "cmdline").read_bytes()
                except OSError:  # ended meanwhile
                    continue
                argv0 = os.path.basename(raw.split(b"\0", 1)[0].decode(errors="replace"))
                programs.add(argv0)
                if needle in raw and f"{entry.name} {argv0}" not in leaks:
                    leaks.append(f"{entry.name} {argv0}")
            if finished:
                break
            if time.monotonic() > deadline:
                processes.stop(process)
                raise TimeoutError(f"{args} still ran after {timeout:g} s")
        out.seek(0)
        err.seek(0)
        return WatchedRun(process.returncode, out.read().decode(), err.read().decode(), programs, leaks)


def _closed_port() -> int:
    # Nothing listens here: the first-boot script finds no instance metadata, as off EC2.
    from tests.conftest import free_port

    return free_port()


class DesktopStack:
    """The role's pieces running for real, rendered for a temp dir: first-boot secrets, the session (run
    by the agent, which supervises it where systemd is not PID 1), websockify, nginx with TLS."""

    def __init__(self, root: Path, *, nginx: bool = True, agent_sections: dict | None = None) -> None:
        from tests.conftest import free_port

        self.root = root
        self.with_nginx = nginx
        self.agent_sections = agent_sections or {}  # more agent.toml sections (e.g. a short idle window)
        self.display = free_display()
        self.vnc_port, self.ws_port, self.agent_port = free_port(), free_port(), free_port()
        self.https_port, self.http_port = free_port(), free_port()
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        import grp
        import pwd

        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.vars = role_vars(
            desktop_user=self.user,
            desktop_display=self.display,
            desktop_vnc_port=self.vnc_port,
            desktop_vnc_server="tigervnc",
            desktop_geometry="800x600",
            desktop_passwd_file=str(self.home / ".vnc" / "passwd"),
            desktop_session_command=SESSION_COMMAND,
            desktop_websockify_listen=f"127.0.0.1:{self.ws_port}",
            desktop_https_port=self.https_port,
            desktop_http_port=self.http_port,
            desktop_tls_dir=str(root / "tls"),
            desktop_htpasswd_file=str(root / "desktop.htpasswd"),
            desktop_agent_url=f"http://127.0.0.1:{self.agent_port}",
            desktop_agent_token_file=str(root / "agent.token"),
            desktop_agent_auth_include=str(root / "agent-auth.conf"),
            desktop_info_file=str(root / "desktop-info.txt"),
            desktop_console_devices=[str(root / "console")],
            desktop_imds_url=f"http://127.0.0.1:{_closed_port()}",
            desktop_status_dir=str(ROLE / "files" / "status"),
            desktop_nginx_group=grp.getgrgid(os.getgid()).gr_name,
            desktop_env_file=str(root / "desktop.env"),
            desktop_agent_command=str(VENV_BIN / "scipioncloud-agent"),
            desktop_firstboot_config=str(root / "desktop-firstboot.json"),
        )
        self.processes: list[subprocess.Popen] = []
        self.logs: list = []
        self.agent = None

    @property
    def password(self) -> str:
        for line in (self.root / "desktop-info.txt").read_text().splitlines():
            if line.startswith("password="):
                return line.removeprefix("password=")
        raise RuntimeError("first boot wrote no password")

    def firstboot(self) -> subprocess.CompletedProcess:
        # the agent's first-boot hook runs before this unit and makes the token (the agent's own code)
        ensure_token(Path(self.vars["desktop_agent_token_file"]))
        render("desktop-firstboot.json.j2", self.vars, Path(self.vars["desktop_firstboot_config"]))
        unit = render("scipioncloud-desktop-firstboot.service.j2", self.vars, self.root / "firstboot.service")
        return subprocess.run(
            exec_start(unit.read_text()),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def agent_config(self) -> dict:
        from tests.conftest import agent_config_dict

        (self.root / "agent").mkdir(exist_ok=True)
        return agent_config_dict(
            self.root / "agent",
            server={"bind": f"127.0.0.1:{self.agent_port}", "token_file": str(self.root / "agent.token")},
            desktop={
                "user": self.user,
                "display": self.display,
                "port": self.vnc_port,
                "vnc": "tigervnc",
                "manager": "agent",
                "session_script": str(ROLE / "files" / "scipioncloud-desktop-session"),
                "env_file": str(self.root / "desktop.env"),
                "passwd_file": self.vars["desktop_passwd_file"],
                "htpasswd_file": self.vars["desktop_htpasswd_file"],
                "info_file": self.vars["desktop_info_file"],
                "websockify": self.vars["desktop_websockify_listen"],
            },
            **self.agent_sections,
        )

    def _spawn(self, name: str, args: list[str], **kw) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        self.logs.append(log)
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kw)
        self.processes.append(process)
        return process

    def start_nginx(self) -> None:
        conf_dir = self.root / "nginx"
        (conf_dir / "tmp").mkdir(parents=True, exist_ok=True)
        render("nginx-site.conf.j2", self.vars, conf_dir / "site.conf")
        temp = " ".join(
            f"{kind}_temp_path {conf_dir / 'tmp' / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # Only the wrapper is ours: Debian's nginx.conf would include the machine's own sites.
        (conf_dir / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"worker_processes 1;\ndaemon off;\npid {conf_dir / 'nginx.pid'};\n"
            + f"error_log {conf_dir / 'error.log'};\nevents {{}}\n"
            + "http {\n include /etc/nginx/mime.types;\n"
            + " log_format desktop_test '$remote_addr $request_method $request_uri $status"
            + " upstream=$upstream_addr site=$http_sec_fetch_site origin=$http_origin';\n"
            + f" access_log {conf_dir / 'access.log'} desktop_test;\n {temp}\n"
            + f" include {conf_dir / 'site.conf'};\n}}\n"
        )
        nginx = [
            "nginx",
            "-p",
            str(conf_dir),
            "-c",
            str(conf_dir / "nginx.conf"),
            "-e",
            str(conf_dir / "error.log"),
        ]
        check = subprocess.run([*nginx, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the rendered site: {check.stderr}")
        self._spawn("nginx", nginx)
        wait_port(self.https_port)

    def agent_env(self) -> dict[str, str]:
        env = {"HOME": str(self.home)}
        if (REPO / "tests" / "support" / "fake_pynvml.py").exists():
            # No GPU here: the agent's NVML calls reach the fake at the pynvml boundary (see nvml_boundary).
            env["PYTHONPATH"] = os.pathsep.join(
                [str(REPO / "tests" / "support" / "nvml_boundary"), str(REPO)]
            )
        return env

    def start(self) -> DesktopStack:
        from tests.conftest import start_agent

        render("desktop.env.j2", self.vars, self.root / "desktop.env")
        self.firstboot()
        unit = render("scipioncloud-websockify.service.j2", self.vars, self.root / "websockify.service")
        self._spawn("websockify", exec_start(unit.read_text()))
        self.agent = start_agent(
            self.root / "agent", self.agent_config(), env=self.agent_env(), contract=True
        )
        wait_port(self.ws_port)
        if self.with_nginx:
            self.start_nginx()
        from agent.desktop import rfb

        if rfb.wait_for_banner(self.vnc_port, 30) is None:
            raise RuntimeError(
                f"the session on :{self.display} never spoke RFB; see {self.root}/agent/agent.log"
            )
        return self

    def stop(self) -> None:
        from tests.conftest import stop_agent

        if self.agent is not None:
            stop_agent(self.agent)  # the agent ends the session it supervises
            self.agent = None
        for process in reversed(self.processes):
            processes.stop(process)
        self.processes.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()

    def access_log(self) -> list[dict[str, str]]:
        """nginx's access log of this stack, one dict per request (the wrapper's desktop_test format)."""
        entries = []
        for line in (self.root / "nginx" / "access.log").read_text().splitlines():
            address, method, uri, status, *fields = line.split(" ")
            entry = {"address": address, "method": method, "uri": uri, "status": status}
            entry.update(field.split("=", 1) for field in fields)
            entries.append(entry)
        return entries

    @property
    def login(self) -> tuple[str, str]:
        """What the user types at the browser's password prompt (nginx basic auth)."""
        return self.user, self.password

    def novnc_url(self, password: str) -> str:
        return (
            f"https://127.0.0.1:{self.https_port}/vnc.html?autoconnect=1&password={password}"
            f"&host=127.0.0.1&port={self.https_port}&path=websockify"
        )
