"""A real sshd on 127.0.0.1 whose logins are recorded as on a server: sshd writes utmp (who and w read it),
wtmp and lastlog itself. It runs in a private mount namespace where /run and /var/log are folders of the
test, so the records land there and never in this machine's own files; the test reads `utmp` from outside.

    with LoginSshd(tmp) as server:
        with server.session() as session:   # `ssh -tt`: a login shell on a pseudo-terminal
            session.type("echo hi")           # input the shell reads, as a person typing
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from tests.support import processes

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile /run/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
"""

# In the namespace: the test's folders over /run and /var/log, then sshd in the foreground.
START = """set -e
mount --make-rprivate /
mount --bind "$1/run" /run
mount --bind "$1/log" /var/log
exec /usr/sbin/sshd -D -e -f "$1/sshd_config"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process = process
        self.log = log

    def type(self, line: str, timeout_s: float = 20) -> None:
        """Send a line and wait until the remote shell has run it (its output comes back)."""
        marker = f"typed-{time.monotonic_ns()}"
        self.process.stdin.write(f"{line}; echo {marker}\n".encode())
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count(marker) >= 2:  # the echo of the line, then output
                return
            time.sleep(0.1)
        raise TimeoutError(f"the remote shell did not run {line!r}: {self.log.read_text(errors='replace')}")

    def close(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        processes.stop(self.process)


class LoginSshd:
    def __init__(self, tmp: Path) -> None:
        self.dir = Path(tmp) / "login-sshd"
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def utmp(self) -> Path:
        return self.dir / "run" / "utmp"

    def start(self) -> LoginSshd:
        for sub in ("run/sshd", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "run/sshd", 0o755)  # noqa: S103 - sshd demands its privsep dir 0755
        self.utmp.touch()
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True
            )
        (self.dir / "authorized_keys").write_text((self.dir / "client_key.pub").read_text())
        (self.dir / "sshd_config").write_text(CONFIG.format(port=self.port, dir=self.dir))
        self._log = (self.dir / "sshd.log").open("w")
        self.process = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", START, "sh", str(self.dir)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sshd did not answer: {(self.dir / 'sshd.log').read_text()}")

    def session(self) -> Session:
        """A login: ssh -tt (a pseudo-terminal on the server) with a shell reading our stdin."""
        log = self.dir / f"session-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["ssh", "-tt", "-i", str(self.dir / "client_key"), "-p", str(self.port),
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return Session(process, log)

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> LoginSshd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
