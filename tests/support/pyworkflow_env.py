"""Scipion's own pyworkflow (PyPI scipion-pyworkflow, at the scipion role's pin) in a virtual environment of
its own, cached beside the rehearsal's root filesystem ($SCIPIONCLOUD_CACHE or ~/.cache/scipioncloud): its
pins (numpy, matplotlib, psutil<=5.9.6) must not change the test environment's.

`run_protocol(project_root, name, seconds)` makes a real Project with pyworkflow's Manager and launches
pyworkflowtests' SleepingProtocol through Project.launchProtocol, exactly as the GUI does: pyworkflow starts
the run as its own process and records `_status` and `_pid` in project.sqlite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support.rootfs import cache_dir

REPO = Path(__file__).resolve().parents[2]


def pinned_version() -> str:
    defaults = yaml.safe_load((REPO / "roles/scipion/defaults/main.yml").read_text())
    return defaults["scipion_core_packages"]["scipion-pyworkflow"]


def python() -> Path:
    """The interpreter of the cached environment, made (pip from PyPI) the first time."""
    version = pinned_version()
    venv = cache_dir() / f"pyworkflow-{version}-py{sys.version_info.major}{sys.version_info.minor}"
    interpreter = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(interpreter), "-m", "pip", "install", "-q", f"scipion-pyworkflow=={version}"],
            check=True,
            timeout=900,
        )
        (venv / ".complete").touch()
    return interpreter


LAUNCH = r"""
import json, sys, time
import pyworkflow as pw
pw.Config.setDomain("pyworkflowtests")
from pyworkflow.project import Manager
from pyworkflowtests.protocols import SleepingProtocol

root, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
project = Manager().createProject(name, location=f"{root}/{name}")
# SleepingProtocol's step i sleeps i+1 s: `steps` steps run about steps*(steps+1)/2 s
protocol = project.newProtocol(SleepingProtocol, objLabel="sleep for the idle test", n=steps)
project.launchProtocol(protocol)
deadline = time.time() + 60
while time.time() < deadline:
    protocol = project.getProtocol(protocol.getObjId())
    if protocol.getStatus() == "running" and protocol.getPid():
        break
    time.sleep(0.2)
print(json.dumps({"id": protocol.getObjId(), "pid": protocol.getPid(), "status": protocol.getStatus(),
                  "label": protocol.getObjLabel(), "project": f"{root}/{name}"}))
"""


def env(root: Path) -> dict[str, str]:
    """pyworkflow keeps its user data (logs, settings) under SCIPION_USER_DATA: inside the test's folder."""
    return {
        **os.environ,
        "SCIPION_USER_DATA": str(root / "user-data"),
        "SCIPION_DOMAIN": "pyworkflowtests",
        "SCIPION_NOTIFY": "False",
    }


def launch_sleeping_protocol(root: Path, name: str, steps: int) -> dict:
    """A real project under `root` with one SleepingProtocol of `steps` steps (step i sleeps i s) launched;
    returns once pyworkflow records it running with its pid."""
    done = subprocess.run(
        [str(python()), "-c", LAUNCH, str(root), name, str(steps)],
        env=env(root),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pyworkflow launch failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_for_status(project: Path, protocol_id: int, statuses: set[str], timeout_s: float = 60) -> str:
    """Poll project.sqlite (through the agent's read-only reader) until the protocol's status is one of
    `statuses`."""
    from agent.scipion_projects import read_protocols

    deadline = time.monotonic() + timeout_s
    status = "?"
    while time.monotonic() < deadline:
        for protocol in read_protocols(project):
            if protocol.id == protocol_id:
                status = protocol.status
        if status in statuses:
            return status
        time.sleep(0.3)
    raise TimeoutError(f"protocol {protocol_id} still {status}")
