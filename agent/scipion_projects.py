"""Scipion protocols that are running or queued, read from each project's project.sqlite, read-only.

pyworkflow stores a project's protocols in `<project>/project.sqlite`, table `Objects`: one row per protocol
(parent_id NULL, classname the protocol class, label its name in the GUI) and child rows for its attributes,
named "<protocol id>.<attribute>", among them `status` (pyworkflow.protocol.constants: launched, running,
interactive and scheduled are its ACTIVE_STATUS), `_pid` (the run's process, 0 when it went through a queue)
and `_jobId` (the queue's job ids, comma-separated), `workingDir` (Runs/000002_Name).

A run writes its progress to its own copy, `<workingDir>/logs/run.db`; project.sqlite learns it only when a
GUI refreshes the project (pyworkflow's Project._updateProtocol reads the run's db). So a protocol that
project.sqlite calls active is read again from its run.db, and one whose run process is gone (a crash, a
reboot) with no queue job is not work, as pyworkflow's own pid check concludes.

The agent opens every file with SQLite's read-only URI, so it can never change a project, and never imports
pyworkflow (the agent runs outside Scipion's Python).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

# pyworkflow.protocol.constants.ACTIVE_STATUS (3.11): the protocol still has work to do
ACTIVE_STATUS = ("launched", "running", "interactive", "scheduled")
DB_NAME = "project.sqlite"

_QUERY = """
SELECT p.id, p.classname, p.label,
       (SELECT value FROM Objects c WHERE c.parent_id = p.id AND c.name = p.id || '.status'),
       (SELECT value FROM Objects c WHERE c.parent_id = p.id AND c.name = p.id || '._pid'),
       (SELECT value FROM Objects c WHERE c.parent_id = p.id AND c.name = p.id || '._jobId'),
       (SELECT value FROM Objects c WHERE c.parent_id = p.id AND c.name = p.id || '.workingDir')
FROM Objects p WHERE p.parent_id IS NULL
"""


@dataclass(frozen=True)
class Protocol:
    project: str
    id: int
    classname: str
    label: str
    status: str
    pid: int
    job_ids: tuple[str, ...]
    working_dir: str = ""

    @property
    def name(self) -> str:
        """How the usage report names it: "<id> <label>", as Scipion's protocol list does."""
        return f"{self.id} {self.label or self.classname}"


def find_projects(roots: tuple[str, ...] | list[str]) -> list[Path]:
    """Project folders: the children of each root that hold a project.sqlite (missing roots are skipped)."""
    found = []
    for root in roots:
        try:
            children = sorted(Path(root).iterdir())
        except OSError:
            continue
        found += [child for child in children if (child / DB_NAME).is_file()]
    return found


def _rows(db: Path, timeout_s: float) -> list[tuple]:
    connection = sqlite3.connect(f"file:{db.as_posix()}?mode=ro", uri=True, timeout=timeout_s)
    try:
        return connection.execute(_QUERY).fetchall()
    finally:
        connection.close()


def read_protocols(project: Path, timeout_s: float = 2.0) -> list[Protocol]:
    """Every protocol of one project as project.sqlite has it; raises sqlite3.Error when it cannot be read."""
    protocols = []
    for row_id, classname, label, status, pid, job_ids, working_dir in _rows(project / DB_NAME, timeout_s):
        if status is None:  # not a protocol (the project's own settings rows)
            continue
        protocols.append(
            Protocol(
                project=project.name,
                id=int(row_id),
                classname=classname or "",
                label=label or "",
                status=status,
                pid=int(pid) if pid and str(pid).isdigit() else 0,
                job_ids=tuple(j for j in (job_ids or "").split(",") if j.strip()),
                working_dir=working_dir or "",
            )
        )
    return protocols


def current(project: Path, protocol: Protocol, timeout_s: float = 2.0) -> Protocol:
    """The protocol as its run's own db has it (status, pid, job ids); unchanged when there is none yet."""
    run_db = project / protocol.working_dir / "logs" / "run.db"
    if not protocol.working_dir or not run_db.is_file():
        return protocol
    for row_id, _, _, status, pid, job_ids, _ in _rows(run_db, timeout_s):
        if int(row_id) == protocol.id and status is not None:
            run_pid = int(pid) if pid and str(pid).isdigit() else 0
            return replace(
                protocol,
                status=status,
                pid=run_pid or protocol.pid,  # 0 in a run.db just copied at launch: the launcher's pid holds
                job_ids=tuple(j for j in (job_ids or "").split(",") if j.strip()),
            )
    return protocol


def _alive(protocol: Protocol) -> bool:
    """A run with neither a live process nor a queue job has died (pyworkflow marks it failed on refresh)."""
    if protocol.job_ids or protocol.status == "scheduled":
        return True
    return protocol.pid > 0 and psutil.pid_exists(protocol.pid)


def active_protocols(roots: tuple[str, ...] | list[str]) -> tuple[list[Protocol], list[str]]:
    """(protocols with work left, errors): a project that cannot be read is an error, not "no work"."""
    active, errors = [], []
    for project in find_projects(roots):
        try:
            for protocol in read_protocols(project):
                if protocol.status in ACTIVE_STATUS:
                    protocol = current(project, protocol)
                    if protocol.status in ACTIVE_STATUS and _alive(protocol):
                        active.append(protocol)
        except sqlite3.Error as exc:
            errors.append(f"{project}: {exc}")
    return active, errors
