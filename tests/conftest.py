"""Fixtures every test area shares: agent configs in temporary folders, the Flask client, a real agent
process on a free loopback port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.app import create_app
from agent.config import Config, from_dict

# The helpers live in tests/support/ (importable without pytest's conftest machinery); re-exported here
# for the tests that still import them from tests.conftest.
from tests.support.agent_process import (  # noqa: F401
    TOKEN,
    AgentProcess,
    agent_config_dict,
    start_agent,
    stop_agent,
    write_toml,
)
from tests.support.paths import REPO, VENV_BIN, free_port  # noqa: F401

KINDS = ("integration", "rehearsal", "gpu")


def pytest_collection_modifyitems(items):
    """Folders are areas (agent, desktop, data, ...); markers are kinds. A test with no kind marker is a unit
    test: mark it so `pytest -m unit` picks the fast ones from every area."""
    for item in items:
        if not any(item.get_closest_marker(kind) for kind in KINDS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def agent_config(tmp_path) -> Config:
    return from_dict(agent_config_dict(tmp_path))


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
