"""Desktop logout: time from `POST /v1/desktop/logout` to a desktop that accepts a new VNC connection
(version handshake, VNC authentication and ServerInit all done), median and p90 over 20 cycles.

Target: under 5 s. Reference measured in the same run: TigerVNC's own `vncserver -kill` followed by
`vncserver` (what the original image's users were left with), to the same accepted connection.
Runs the role's real session script, supervised by the real agent, on a display in :40-:59.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import rfb_client
from tests.support.desktop import SESSION_COMMAND, DesktopStack, free_display

CYCLES = 20
TARGET_S = 5.0


def wait_accepts(port: int, password: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rfb_client.connect(port, password, timeout=2)
            return
        except (OSError, rfb_client.VncRefused):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def ours(root: Path) -> list[float]:
    stack = DesktopStack(root, nginx=False)
    try:
        stack.start()
        password = stack.password
        wait_accepts(stack.vnc_port, password)
        times = []
        for cycle in range(CYCLES):
            began = time.monotonic()
            response = stack.agent.request("POST", "/v1/desktop/logout")
            if response.status_code != 200:
                raise RuntimeError(f"cycle {cycle}: logout answered {response.status_code}: {response.text}")
            wait_accepts(stack.vnc_port, password)
            times.append(time.monotonic() - began)
        return times
    finally:
        stack.stop()


def reference(root: Path) -> list[float] | None:
    """TigerVNC's vncserver wrapper: kill the session, start a new one, wait for an accepted viewer."""
    if shutil.which("vncserver") is None:
        return None
    from tests.conftest import free_port

    display, port, password = free_display(), free_port(), "Bench234"
    home = root / "home"
    (home / ".vnc").mkdir(parents=True)
    passwd = home / ".vnc" / "passwd"
    passwd.write_bytes(
        subprocess.run(["tigervncpasswd", "-f"], input=password.encode(), capture_output=True).stdout
    )
    passwd.chmod(0o600)
    xstartup = home / ".vnc" / "xstartup"
    xstartup.write_text(f"#!/bin/sh\nexec {SESSION_COMMAND}\n")
    xstartup.chmod(0o755)
    env = {**os.environ, "HOME": str(home)}
    start = [
        "vncserver",
        f":{display}",
        "-localhost",
        "yes",
        "-rfbport",
        str(port),
        "-SecurityTypes",
        "VncAuth",
        "-PasswordFile",
        str(passwd),
        "-xstartup",
        str(xstartup),
        "-geometry",
        "800x600",
    ]
    kill = ["vncserver", "-kill", f":{display}"]
    times = []
    try:
        subprocess.run(start, env=env, capture_output=True, check=True, timeout=60)
        wait_accepts(port, password)
        for _ in range(CYCLES):
            began = time.monotonic()
            subprocess.run(kill, env=env, capture_output=True, timeout=60)
            subprocess.run(start, env=env, capture_output=True, check=True, timeout=60)
            wait_accepts(port, password)
            times.append(time.monotonic() - began)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"reference: vncserver cycle failed ({exc}); skipped")
        return None
    finally:
        subprocess.run(kill, env=env, capture_output=True, timeout=60)
    return times


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-desktop-") as tmp:
        try:
            mine = ours(Path(tmp) / "ours")
        except Exception as exc:
            print(f"bench_desktop_logout: cannot run: {exc}", file=sys.stderr)
            return 1
        ref = reference(Path(tmp) / "reference")
    median = statistics.median(mine)
    print(f"desktop logout -> new VNC connection accepted, {CYCLES} cycles (agent + role session script)")
    print(f"  ours:      median {median:.3f} s   p90 {p90(mine):.3f} s   max {max(mine):.3f} s")
    verdict = "met" if median < TARGET_S else "MISSED"
    print(f"  target:    {TARGET_S:.1f} s   median/target = {median / TARGET_S:.3f}  ({verdict})")
    if ref:
        ref_median = statistics.median(ref)
        print(f"  reference: vncserver -kill + vncserver: median {ref_median:.3f} s   p90 {p90(ref):.3f} s")
        print(f"  ours/reference median = {median / ref_median:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
