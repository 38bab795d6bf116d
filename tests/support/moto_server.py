"""A real moto EC2 server on 127.0.0.1 standing in for AWS, with Canonical's Ubuntu images listed so a
real `source_ami_filter` / DescribeImages(Owners=[099720109477]) resolves."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support import processes

AMIS = Path(__file__).with_name("ubuntu-amis.json")
CANONICAL = "099720109477"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # the emulator's fixed fake credentials
    "AWS_SESSION_TOKEN": "testing",
}


def endpoint_env(url: str, credentials: dict[str, str], region: str) -> dict[str, str]:
    """Environment that points boto3 (AWS_ENDPOINT_URL) and our CLI at one local endpoint only: no IMDS, no
    user config or credentials files."""
    return {
        **credentials,
        "AWS_ENDPOINT_URL": url,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen

    def env(self, region: str = "eu-west-1") -> dict[str, str]:
        return endpoint_env(self.url, FAKE_CREDENTIALS, region)

    def reset(self) -> None:
        requests.post(self.url + "/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        processes.stop(self.process)


def start(log_path: Path, extra_env: dict[str, str] | None = None) -> MotoServer:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    env = {**os.environ, "MOTO_AMIS_PATH": str(AMIS), **FAKE_CREDENTIALS, **(extra_env or {})}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log_path.read_text()}")
        try:
            requests.get(url + "/moto-api/", timeout=1)
            return MotoServer(url, process)
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"moto_server did not answer on {url}")
