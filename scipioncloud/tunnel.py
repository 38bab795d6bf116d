"""An SSH tunnel to an instance's agent on its 127.0.0.1:9777, and the agent token read over SSH.

We run the system `ssh -N -L` rather than paramiko: it honours the operator's ~/.ssh/config, ssh-agent,
known_hosts and ProxyJump exactly as their own `ssh` does, and adds no dependency."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import DEFAULT_PORT, DEFAULT_TOKEN_FILE
from scipioncloud.errors import OperationFailed

AGENT_PORT = DEFAULT_PORT  # the agent's contract (agent/config.py), not restated here
TOKEN_FILE = str(DEFAULT_TOKEN_FILE)


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str = "ubuntu"
    key_file: Path | None = None
    port: int = 22
    options: tuple[str, ...] = field(default=("StrictHostKeyChecking=accept-new",))
    sudo: bool = True  # the token file is root's; a root login needs no sudo

    def argv(self) -> list[str]:
        argv = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        for option in self.options:
            argv += ["-o", option]
        if self.key_file:
            argv += ["-i", str(self.key_file)]
        return [*argv, f"{self.user}@{self.host}"]


def read_token(target: SshTarget, token_file: str | None = None) -> str:
    """The agent token (root-only file) via `sudo cat`; never printed."""
    token_file = token_file or TOKEN_FILE
    result = subprocess.run(
        [*target.argv(), *(["sudo", "-n"] if target.sudo else []), "cat", token_file],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise OperationFailed(
            f"could not read the agent token on {target.host} over ssh (exit {result.returncode}): "
            f"{result.stderr.strip()[:300]}; check the key (--key) and that the instance finished booting"
        )
    return result.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def open_tunnel(target: SshTarget, remote_port: int | None = None, timeout_s: float = 30) -> Iterator[str]:
    """Forward a free local port to the instance's 127.0.0.1:remote_port; yields the local base URL."""
    remote_port = remote_port or AGENT_PORT
    local = _free_port()
    argv = target.argv()
    argv[1:1] = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise OperationFailed(
                    f"ssh tunnel to {target.host} ended: {process.stderr.read().strip()[:300]}"
                )
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex(("127.0.0.1", local)) == 0:
                    break
            if time.monotonic() > deadline:
                raise OperationFailed(f"ssh tunnel to {target.host} did not open within {timeout_s:.0f} s")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{local}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()
