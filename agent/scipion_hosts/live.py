"""hosts.conf from the Slurm this machine submits to: read the partitions and nodes with the real `scontrol`,
render them (hostsconf.render) and write the file only when its text changes.

The one path from a live cluster to Scipion's hosts.conf: `scipioncloud-agent hosts-conf` (the boot unit of
a desktop joined to a cluster, roles/scipion's scipioncloud-hosts-conf.service) and `scipioncloud cluster
hosts-conf` (an operator, by hand) both call `write_from_slurm`. An unreachable controller is an error, never
an empty or local-only file: Scipion would then run every protocol on the desktop."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent import shell
from agent.scipion_hosts import hostsconf, queues

log = logging.getLogger(__name__)


class SlurmUnreachable(RuntimeError):
    """scontrol is missing or the controller does not answer; the message says what Slurm said."""


@dataclass(frozen=True)
class Written:
    path: Path
    queues: list[queues.Queue]
    changed: bool  # False: the file already held this text (left untouched)


def read_queues(*, timeout: float = 60) -> list[queues.Queue]:
    """The queues of the live cluster (`scontrol show partition|node -o`); SlurmUnreachable when Slurm does
    not answer, ValueError when it answers with no usable partition."""
    outputs = []
    for what in ("partition", "node"):
        try:
            outputs.append(shell.run(["scontrol", "show", what, "-o"], timeout=timeout).stdout)
        except shell.CommandError as exc:
            raise SlurmUnreachable(f"scontrol show {what}: {exc.first_line}") from None
    return queues.from_scontrol(*outputs)


def wait_for_queues(*, wait_s: float = 0, interval_s: float = 5) -> list[queues.Queue]:
    """read_queues, retried for up to `wait_s` seconds (a login node boots while the head node may still be
    starting slurmctld); the last error is raised when time runs out."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return read_queues()
        except (SlurmUnreachable, ValueError) as exc:
            if time.monotonic() + interval_s > deadline:
                raise
            log.info("Slurm not ready (%s); trying again in %g s", exc, interval_s)
            time.sleep(interval_s)


def write_from_slurm(
    path: str | Path, *, wait_s: float = 0, mpi_command: str = hostsconf.MPI_COMMAND
) -> Written:
    """Write hosts.conf from the live partitions, root-owned 0644 when run as root; rewrite only on change."""
    path = Path(path)
    found = wait_for_queues(wait_s=wait_s)
    text = hostsconf.render(found, mpi_command=mpi_command)
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = None
    if current == text and _mode_ok(path):
        return Written(path, found, changed=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    hostsconf.write(path, text)  # a new file, owned by whoever writes it: root on an instance
    log.info("wrote %s: queues %s", path, ", ".join(q.name for q in found))
    return Written(path, found, changed=True)


def _mode_ok(path: Path) -> bool:
    info = path.stat()
    writable_by_others = info.st_mode & 0o022
    return not writable_by_others and (os.geteuid() != 0 or info.st_uid == 0)
