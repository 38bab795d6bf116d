"""Slurm jobs on this node (squeue) and their processes here (scontrol listpids), for the idle rule and the
usage report. Without Slurm on the machine both answer "nothing"; a Slurm that does not answer raises."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONF = Path("/etc/slurm/slurm.conf")  # Debian's slurm-wlm; SLURM_CONF overrides, as for Slurm


class SlurmError(RuntimeError):
    pass


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    user: str
    name: str


def node_name(configured: str = "") -> str:
    return configured or socket.gethostname().split(".")[0]


def conf_path(configured: str = "") -> Path:
    return Path(configured or os.environ.get("SLURM_CONF") or DEFAULT_CONF)


def installed(conf: Path) -> bool:
    """Slurm's client and a configuration: a bare slurm-client package without a cluster is no Slurm."""
    return shutil.which("squeue") is not None and conf.is_file()


def _run(argv: list[str], conf: Path, timeout_s: float) -> str:
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in {timeout_s:g} s") from None
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(argv)}: {done.stderr.strip()[:300]}")
    return done.stdout


FORMAT = "%i|%T|%u|%j"


def _jobs(out: str) -> list[Job]:
    jobs = []
    for line in out.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            jobs.append(Job(*parts))
    return jobs


def jobs_on_node(node: str, conf: Path, *, timeout_s: float = 5.0) -> list[Job]:
    """Jobs running on `node`, and pending jobs of the partitions `node` belongs to (they may start here;
    a pending job has no node yet, so `squeue --nodelist` alone would miss it); [] without Slurm."""
    if not installed(conf):
        return []
    jobs = _jobs(_run(["squeue", "--noheader", "--nodelist", node, "--format", FORMAT], conf, timeout_s))
    partitions = _run(["sinfo", "--noheader", "--nodes", node, "--format", "%R"], conf, timeout_s).split()
    if partitions:
        pending = _run(
            ["squeue", "--noheader", "--states", "PENDING", "--partition", ",".join(sorted(set(partitions))),
             "--format", FORMAT],
            conf,
            timeout_s,
        )  # fmt: skip
        seen = {job.id for job in jobs}
        jobs += [job for job in _jobs(pending) if job.id not in seen]
    return jobs


def job_pids(job_id: str, conf: Path, *, timeout_s: float = 5.0) -> list[int]:
    """Processes of `job_id` on this node (scontrol listpids; empty when none run here)."""
    if shutil.which("scontrol") is None or not conf.is_file():
        return []
    try:
        out = _run(["scontrol", "listpids", job_id], conf, timeout_s)
    except SlurmError:
        return []  # the job ended or has no step here
    pids = []
    for line in out.splitlines()[1:]:  # header: PID JOBID STEPID LOCALID GLOBALID
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if first.isdigit():
            pids.append(int(first))
    return pids
