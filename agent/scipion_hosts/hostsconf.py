"""Scipion's hosts.conf for a Slurm cluster, from its queues (agent.scipion_hosts.queues).

How pyworkflow reads it (pyworkflow/protocol/hosts.py, launch.py, project.py, 3.11):
- RawConfigParser with ";" comments; `%_(` becomes `%(` and the values are %-formatted, so a literal % for
  Slurm is written %%.
- QUEUES = {queue: [[VARIABLE, default, label, help], ...]}: the queue dialog shows each row; the chosen
  values (strings) update the protocol's submit dictionary *after* its own values, so GPU_COUNT offered here
  replaces the count pyworkflow takes from the protocol's GPU list (0 for plugins whose GPU field is not
  `gpuList`).
- CHECK_COMMAND's output decides a job's fate: empty output, or a match of JOB_DONE_REGEX, means "finished";
  anything else means "still running". A protocol still active in Scipion whose job is "finished" is marked
  failed. An empty `JOB_DONE_REGEX =` is the regex '' and matches everything: every running job would fail.
So the check prints the job's Slurm state (errors included, so an unreachable controller reads as "running",
never as "finished"), and the regex matches only Slurm's terminal states and "Invalid job id" (a job Slurm has
already forgotten).

Spot queues: a reclaimed node makes Slurm end the job NODE_FAIL, or requeue it under the same job id when the
job allows it (sbatch(1) --requeue / --no-requeue; ParallelCluster's "Spot Instance running single node jobs
is interrupted"). A requeued job is PENDING again, so the check keeps the protocol running and pyworkflow
resumes it from its last finished step when the script starts over. JOB_REQUEUE asks for that on Spot queues
only; elsewhere a lost node ends the job and Scipion reports the protocol failed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from agent.scipion_hosts.queues import Queue

# Slurm's terminal job states (squeue(1) JOB STATE CODES); PENDING, RUNNING, CONFIGURING, COMPLETING,
# REQUEUED, RESIZING, SUSPENDED, STOPPED... are "still in the queue".
TERMINAL_STATES = (
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
)
CHECK_COMMAND = "squeue --noheader --states=all --format=%%T --jobs=%_(JOB_ID)s 2>&1"
JOB_DONE_REGEX = "(?m)^(" + "|".join(TERMINAL_STATES) + r")\b|Invalid job id"
DEFAULT_TIME_HOURS = 24
REQUEUE = "requeue"  # sbatch --requeue: Spot queues, where a reclaimed node is expected
NO_REQUEUE = "no-requeue"  # sbatch --no-requeue: a lost node fails the job, Scipion reports it
MPI_COMMAND = "mpirun -np %_(JOB_NODES)d --bind-to none %_(COMMAND)s"

SUBMIT_TEMPLATE = """#!/bin/bash
### Scipion run %_(JOB_NAME)s of project %_(SCIPION_PROJECT)s
#SBATCH --job-name=scipion%_(JOB_NAME)s
#SBATCH --output=%_(JOB_LOGS)s.out
#SBATCH --error=%_(JOB_LOGS)s.err
#SBATCH --partition=%_(JOB_QUEUE)s
### One node: MPI ranks, their threads and the GPUs stay together
#SBATCH --nodes=1
#SBATCH --ntasks=%_(JOB_NODES)d
#SBATCH --cpus-per-task=%_(JOB_THREADS)d
### Memory per node (MB), wall time (hours), GPUs on the node
#SBATCH --mem=%_(JOB_MEMORY)s
#SBATCH --time=%_(JOB_TIME)s:00:00
#SBATCH --gres=gpu:%_(GPU_COUNT)s
### Back in the queue, same job id, when Slurm loses the node (a Spot reclaim): requeue or no-requeue
#SBATCH --%_(JOB_REQUEUE)s
export XMIPP_IN_QUEUE=1
cd "$SLURM_SUBMIT_DIR"
echo "$SLURM_JOB_NODELIST" > %_(JOB_NODEFILE)s
echo "Scipion job $SLURM_JOB_ID on $(hostname) at $(date -Is); GPUs: ${CUDA_VISIBLE_DEVICES:-none}"
%_(JOB_COMMAND)s"""


def _gpu_label(queue: Queue) -> str:
    if not queue.has_gpus:
        return "GPUs (none on this queue)"
    per_node = (
        str(queue.gpus_max) if queue.gpus_min == queue.gpus_max else f"{queue.gpus_min}-{queue.gpus_max}"
    )
    kind = f" {'/'.join(queue.gpu_types)}" if queue.gpu_types else ""
    return f"GPUs ({per_node}{kind} per node)"


def queue_parameters(queue: Queue) -> list[list[str]]:
    """The queue dialog's rows for one queue: [VARIABLE, default, label, help]."""
    gpus_default = 1 if queue.gpus_min >= 1 else 0
    # A one-GPU share of memory on GPU queues (so one-GPU jobs can share a node); the smallest node on CPU
    # queues. Either way the default fits every node of the queue.
    memory_default = (
        min(queue.memory_mb_per_gpu, queue.memory_mb_min) if queue.has_gpus else queue.memory_mb_min
    )
    hours = queue.max_time_hours
    time_default = DEFAULT_TIME_HOURS if hours is None else max(1, min(DEFAULT_TIME_HOURS, hours))
    time_limit = "no limit" if hours is None else f"at most {hours}"
    return [
        [
            "GPU_COUNT",
            str(gpus_default),
            _gpu_label(queue),
            f"GPUs Slurm gives this job on its node (--gres=gpu:N), at most {queue.gpus_max} here. "
            "It replaces "
            "the count from the protocol's GPU list: ask as many as the GPU IDs the protocol uses.",
        ],
        [
            "JOB_MEMORY",
            str(memory_default),
            f"Memory per node (MB, max {queue.memory_mb_max})",
            f"Memory for the job on its node (--mem, MB). Nodes of {queue.name} have "
            f"{queue.memory_mb_min}-{queue.memory_mb_max} MB; Slurm refuses more than the largest.",
        ],
        [
            "JOB_TIME",
            str(time_default),
            "Time (hours)",
            f"Wall-clock limit in hours ({time_limit} on {queue.name}); Slurm stops the job after it.",
        ],
        [
            "JOB_REQUEUE",
            REQUEUE if queue.spot else NO_REQUEUE,
            f"On a lost node ({REQUEUE} or {NO_REQUEUE})",
            f"{REQUEUE}: when Slurm loses the node (a Spot reclaim) the job goes back to the queue under "
            "the same id and the protocol resumes from its last finished step once it starts again; "
            f"{NO_REQUEUE}: the job ends NODE_FAIL and Scipion reports the protocol failed.",
        ],
    ]


def render(
    queues: Iterable[Queue],
    *,
    mpi_command: str = MPI_COMMAND,
    header: str = "Generated by scipioncloud from the cluster's partitions; regenerate, do not edit.",
) -> str:
    """The whole hosts.conf text (the `localhost` host with the Slurm queue system)."""
    ordered = sorted(queues, key=lambda q: (not q.default, q.name))  # the default partition first
    if not ordered:
        raise ValueError("no queue to write: a Slurm hosts.conf needs at least one partition")
    queue_rows = {q.name: queue_parameters(q) for q in ordered}
    queues_json = json.dumps(queue_rows, indent=2).replace("\n", "\n ")
    template = SUBMIT_TEMPLATE.replace("\n", "\n    ")
    return (
        f"; {header}\n"
        "; Read by pyworkflow.protocol.hosts.HostConfig: %_( is %( and a literal % is %%.\n"
        "[localhost]\n"
        f"PARALLEL_COMMAND = {mpi_command}\n"
        "NAME = SLURM\n"
        "MANDATORY = 0\n"
        "SUBMIT_PREFIX = scipion\n"
        "SUBMIT_COMMAND = sbatch %_(JOB_SCRIPT)s\n"
        "CANCEL_COMMAND = scancel %_(JOB_ID)s\n"
        f"CHECK_COMMAND = {CHECK_COMMAND}\n"
        f"JOB_DONE_REGEX = {JOB_DONE_REGEX}\n"
        f"SUBMIT_TEMPLATE = {template}\n"
        f"QUEUES = {queues_json}\n"
        f'QUEUES_DEFAULT = {{"GPU_COUNT": "0", "JOB_TIME": "{DEFAULT_TIME_HOURS}", '
        f'"JOB_REQUEUE": "{NO_REQUEUE}"}}\n'
    )


def render_local(*, mpi_command: str = MPI_COMMAND) -> str:
    """hosts.conf for a machine without a queue system (only the MPI command)."""
    return (
        "; Generated by scipioncloud: no queue system on this machine.\n"
        f"[localhost]\nPARALLEL_COMMAND = {mpi_command}\n"
    )


def write(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Replace the file atomically, readable by all and writable by its owner only (root on an image):
    the desktop user cannot rewrite it (pyworkflow's test helpers write hosts.conf files)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hosts.conf.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
