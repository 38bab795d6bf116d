"""Fixtures every test area shares: agent configs in temporary folders, the Flask client, a real agent
process on a free loopback port."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from agent.app import create_app
from agent.config import Config, from_dict
from tests.support import processes

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_config_dict(tmp: Path, **sections) -> dict:
    """A config that keeps every path inside `tmp`; sections given override whole keys."""
    (tmp / "state").mkdir(exist_ok=True)
    (tmp / "mnt").mkdir(exist_ok=True)
    (tmp / "fstab").touch()
    base = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "token_file": str(tmp / "agent.token")},
        "storage": {
            "state_dir": str(tmp / "state"),
            "fstab": str(tmp / "fstab"),
            "mount_roots": [str(tmp / "mnt")],
            "prewarm_auto": False,
        },
        "desktop": {"vnc": "tigervnc"},
        # The agent looks up its EC2 identity at start: keep it on loopback, where nothing listens there.
        "host": {"imds_url": f"http://127.0.0.1:{free_port()}"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base


def write_toml(path: Path, data: dict) -> Path:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def agent_config(tmp_path) -> Config:
    return from_dict(agent_config_dict(tmp_path))


TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def app(agent_config):
    app = create_app(agent_config, token=TOKEN)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


@dataclasses.dataclass
class AgentProcess:
    url: str
    token: str
    config_path: Path
    process: subprocess.Popen
    log: object = None

    def get(self, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return requests.get(self.url + path, headers=headers, timeout=10, **kw)

    def request(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kw)


def start_agent(tmp: Path, config: dict, env: dict | None = None) -> AgentProcess:
    """Start the real `scipioncloud-agent serve` and wait until /healthz answers."""
    path = write_toml(tmp / "agent.toml", config)
    bind = config["server"]["bind"]
    log = (tmp / "agent.log").open("w")
    process = subprocess.Popen(
        [str(VENV_BIN / "scipioncloud-agent"), "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://{bind}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.close()
            raise RuntimeError(f"agent exited with {process.returncode}: {(tmp / 'agent.log').read_text()}")
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                token = Path(config["server"]["token_file"]).read_text().strip()
                return AgentProcess(url, token, path, process, log)
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    log.close()
    raise RuntimeError(f"agent did not answer on {url}: {(tmp / 'agent.log').read_text()}")


def stop_agent(agent: AgentProcess) -> None:
    processes.stop(agent.process)
    if agent.log is not None and not agent.log.closed:
        agent.log.close()


@pytest.fixture
def agent_process(tmp_path):
    agent = start_agent(tmp_path, agent_config_dict(tmp_path))
    yield agent
    stop_agent(agent)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """One moto EC2 server on 127.0.0.1 for the session; use `aws_env` for a clean state per test."""
    from tests.support import moto_server as moto

    server = moto.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Point boto3 at the emulator, reset to an empty account with only Canonical's Ubuntu images."""
    moto_server.reset()
    for key, value in moto_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server.env()


@pytest.fixture(scope="session")
def vendor_apt_repo(tmp_path_factory):
    """One signed local apt repository on 127.0.0.1 for the session, standing in for NVIDIA's CUDA repository,
    Ubuntu's NVIDIA driver packages, TurboVNC and VirtualGL (tests/support/aptrepo.py; default package set).
    Point a role at `vendor_apt_repo.url` with `vendor_apt_repo.keyring_path` or `.key_url`."""
    from tests.support.aptrepo import FakeVendorAptRepo

    repo = FakeVendorAptRepo.build(tmp_path_factory.mktemp("vendor-apt-repo"))
    yield repo
    repo.stop()


@pytest.fixture(scope="session")
def turbovnc_apt_repo(tmp_path_factory):
    """TurboVNC's repository layout (suite "any", component "main"), signed with its own key, on 127.0.0.1:
    the stand-in for TurboVNC's official apt repository."""
    from tests.support.aptrepo import FakeVendorAptRepo, turbovnc_packages

    repo = FakeVendorAptRepo.build(tmp_path_factory.mktemp("turbovnc-repo"), turbovnc_packages(), suite="any")
    yield repo
    repo.stop()


@pytest.fixture(scope="session")
def virtualgl_apt_repo(tmp_path_factory):
    """VirtualGL's: a second repository with its own key, as upstream."""
    from tests.support.aptrepo import FakeVendorAptRepo, virtualgl_packages

    folder = tmp_path_factory.mktemp("virtualgl-repo")
    repo = FakeVendorAptRepo.build(folder, virtualgl_packages(), suite="any")
    yield repo
    repo.stop()


@pytest.fixture(scope="session")
def miniforge_standin(tmp_path_factory):
    """The stand-in for Miniforge's installer (tests/support/conda_standin.py) served on 127.0.0.1; yields
    role variables pointing roles/scipion at it (its URL and sha256)."""
    from tests.support import conda_standin

    installer = conda_standin.build(tmp_path_factory.mktemp("miniforge"))
    with conda_standin.serve(installer) as url:
        yield {"scipion_conda_installer_url": url, "scipion_conda_installer_sha256": installer.sha256}


@pytest.fixture(scope="session")
def rootfs_tarball() -> Path:
    """The cached Debian 12 root filesystem tarball (debootstrap builds it on first use; see
    tests/support/rootfs.py for extracting a disposable copy and running playbooks in it)."""
    from tests.support import rootfs

    return rootfs.tarball()


@pytest.fixture(scope="session")
def agent_wheel(tmp_path_factory) -> Path:
    """A wheel of this repository, as `scipioncloud bake` builds it for the agent role."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("scipioncloud-*.whl")
    return wheel
