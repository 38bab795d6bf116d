"""Scipion's own pyworkflow (PyPI scipion-pyworkflow, at the scipion role's pin) in .venv-scipion, apart from
.venv: its pins (numpy, matplotlib, psutil<=5.9.6) must not change the test environment's.

`run_protocol(project_root, name, seconds)` makes a real Project with pyworkflow's Manager and launches
pyworkflowtests' SleepingProtocol through Project.launchProtocol, exactly as the GUI does: pyworkflow starts
the run as its own process and records `_status` and `_pid` in project.sqlite."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from tests.support.cluster_venvs import scipion_python

REPO = Path(__file__).resolve().parents[2]


def python() -> Path:
    """The interpreter of .venv-scipion (tests/support/cluster_venvs.py: pyworkflow at the role's pin, made
    by `make setup`, or here the first time): one Scipion environment for every test that needs one."""
    return scipion_python()


LAUNCH = r"""
import json, os, sys, time
import pyworkflow as pw
pw.Config.setDomain("pyworkflowtests")
from pyworkflow.project import Manager
from pyworkflow.protocol.hosts import HostConfig
from pyworkflowtests.protocols import SleepingProtocol

HostConfig.writeBasic(os.environ["SCIPION_HOSTS"])  # pyworkflow's own minimal [localhost]

root, name, steps = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3].split(",")]
project = Manager().createProject(name)  # in SCIPION_USER_DATA/projects, as Scipion's GUI makes it
os.chdir(project.getPath())  # pyworkflow's paths are relative to the project, as when the GUI opens one
launched = []
for n in steps:
    # SleepingProtocol's step i sleeps i s: n steps run about n*(n+1)/2 s
    protocol = project.newProtocol(SleepingProtocol, n=n)
    protocol.setObjLabel(f"sleep {n} steps")
    project.launchProtocol(protocol)
    launched.append({"id": protocol.getObjId(), "pid": protocol.getPid(), "label": protocol.getObjLabel(),
                     "project": project.getPath()})
print(json.dumps(launched))
"""


def env(root: Path) -> dict[str, str]:
    """pyworkflow keeps its user data (logs, settings) under SCIPION_USER_DATA: inside the test's folder."""
    return {
        **os.environ,
        "SCIPION_USER_DATA": str(root / "ScipionUserData"),
        "SCIPION_HOSTS": str(root / "hosts.conf"),
        "SCIPION_CONFIG": str(root / "scipion.conf"),
        "SCIPION_DOMAIN": "pyworkflowtests",
        "SCIPION_PYTHON": str(python()),  # the interpreter pyworkflow starts each protocol run with
        "SCIPION_NOTIFY": "False",
    }


def projects_dir(root: Path) -> Path:
    """Where the projects of `launch_sleeping_protocol(root, ...)` live: the agent's idle.project_dirs."""
    return root / "ScipionUserData" / "projects"


def launch_sleeping_protocols(root: Path, name: str, *steps: int) -> list[dict]:
    """A real project `name` (in root/ScipionUserData/projects) with one SleepingProtocol per entry of
    `steps` (its number of steps; step i sleeps i s), each launched by pyworkflow, which starts the run as
    its own process. Returns [{id, pid, label, project}] (pid: the launcher's record)."""
    # Output to a file, not a pipe: the runs inherit it and outlive the launcher
    out, err = root / "pyworkflow-launch.out", root / "pyworkflow-launch.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run(
            [str(python()), "-c", LAUNCH, str(root), name, ",".join(map(str, steps))],
            env=env(root),
            stdout=stdout,
            stderr=stderr,
            timeout=180,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"pyworkflow launch failed: {err.read_text()[-2000:]}")
    return json.loads(out.read_text().strip().splitlines()[-1])


def wait_for_status(project: Path, protocol_id: int, statuses: set[str], timeout_s: float = 60) -> str:
    """Poll the protocol's run (through the agent's read-only reader) until its status is one of
    `statuses`."""
    from agent.scipion_projects import current, read_protocols

    deadline = time.monotonic() + timeout_s
    status = "?"
    while time.monotonic() < deadline:
        for protocol in read_protocols(project):
            if protocol.id == protocol_id:
                status = current(project, protocol).status
        if status in statuses:
            return status
        time.sleep(0.3)
    raise TimeoutError(f"protocol {protocol_id} still {status}")


def kill_runs(launched: list[dict]) -> None:
    """End launched protocols' processes (the runs outlive the launcher): a crash as pyworkflow sees one."""
    import psutil

    pids = {p["pid"] for p in launched}
    for project in {p["project"] for p in launched}:
        pids.update(_run_pids(Path(project)))
    for pid in pids - {0}:
        try:
            process = psutil.Process(pid)
            family = [*process.children(recursive=True), process]
        except psutil.Error:
            continue
        for member in family:
            with contextlib.suppress(psutil.Error):
                member.kill()
        psutil.wait_procs(family, timeout=10)


def _run_pids(project: Path) -> list[int]:
    from agent.scipion_projects import current, read_protocols

    return [current(project, p).pid for p in read_protocols(project) if current(project, p).pid > 0]
