"""Scipion protocols that are running or queued, read from each project's project.sqlite, read-only.

pyworkflow stores a project's protocols in `<project>/project.sqlite`, table `Objects`: one row per protocol
(parent_id NULL, classname the protocol class, label its name in the GUI) and child rows for its attributes,
among them `_status` (pyworkflow.protocol.constants: launched, running, interactive and scheduled are its
ACTIVE_STATUS), `_pid` (the run's process, 0 when it went through a queue) and `_jobId` (the queue's job ids,
comma-separated). The agent opens the file with SQLite's read-only URI so it can never change a project, and
never imports pyworkflow (the agent runs outside Scipion's Python).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

# pyworkflow.protocol.constants.ACTIVE_STATUS (3.11): the protocol still has work to do
ACTIVE_STATUS = ("launched", "running", "interactive", "scheduled")
DB_NAME = "project.sqlite"

_QUERY = """
SELECT p.id, p.classname, p.label,
       (SELECT value FROM Objects c WHERE c.parent_id = p.id AND c.name = '_status'),
       (SELECT value FROM Objects c WHERE c.parent_id = p.id AND c.name = '_pid'),
       (SELECT value FROM Objects c WHERE c.parent_id = p.id AND c.name = '_jobId')
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


def read_protocols(project: Path, timeout_s: float = 2.0) -> list[Protocol]:
    """Every protocol of one project; raises sqlite3.Error when the database cannot be read."""
    uri = f"file:{(project / DB_NAME).as_posix()}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=timeout_s)
    try:
        rows = connection.execute(_QUERY).fetchall()
    finally:
        connection.close()
    protocols = []
    for row_id, classname, label, status, pid, job_ids in rows:
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
            )
        )
    return protocols


def active_protocols(roots: tuple[str, ...] | list[str]) -> tuple[list[Protocol], list[str]]:
    """(protocols with work left, errors): a project that cannot be read is an error, not "no work"."""
    active, errors = [], []
    for project in find_projects(roots):
        try:
            active += [p for p in read_protocols(project) if p.status in ACTIVE_STATUS]
        except sqlite3.Error as exc:
            errors.append(f"{project}: {exc}")
    return active, errors
