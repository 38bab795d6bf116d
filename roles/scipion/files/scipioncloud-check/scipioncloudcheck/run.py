"""Launch ProtClusterCheck on Scipion's queues the way the GUI does, and follow it the way the GUI does.

`python -m scipioncloudcheck.run --project NAME [--queue Q[:GPUS]]... [--timeout S]` prints one JSON object:
{"queues": [{queue, gpus_asked, gpus_granted, node, job_id, status, error, submit, start, finish}, ...]}.
The protocol goes through pyworkflow's own code: Project.launchProtocol (submission via hosts.conf's
SUBMIT_TEMPLATE/SUBMIT_COMMAND) and Project.getRuns(refresh=True, checkPids=True) (the runs-tree refresh,
which applies CHECK_COMMAND and JOB_DONE_REGEX)."""

import argparse
import json
import os
import re
import subprocess
import sys
import time

from pyworkflow.project import Manager

FINAL = ("finished", "failed", "aborted")


def open_project(name):
    """Load or create the project, and work inside it as Scipion's GUI does (its paths are relative)."""
    manager = Manager()
    project = manager.loadProject(name) if manager.hasProject(name) else manager.createProject(name)
    os.chdir(project.path)
    return project


def queue_defaults(project, queue):
    """The queue dialog's values before the user edits them: {VARIABLE: default}."""
    host = project.getHostConfig("localhost")
    rows = host.getQueueSystem().getQueues()
    if queue not in rows:
        raise SystemExit(f"queue {queue!r} is not in hosts.conf (queues: {', '.join(rows)})")
    return {row[0]: row[1] for row in rows[queue]}


def launch(project, queue, values=None, seconds=2.0, fail_with="", label=None):
    """Make, configure (queue dialog values) and launch one ProtClusterCheck -> (protocol, submitted)."""
    from scipioncloudcheck.protocols import ProtClusterCheck

    protocol = project.newProtocol(
        ProtClusterCheck, seconds=seconds, failWith=fail_with, objLabel=label or f"check {queue}"
    )
    chosen = queue_defaults(project, queue)
    chosen.update({k: str(v) for k, v in (values or {}).items()})
    protocol._useQueue.set(True)
    protocol.setQueueParams([queue, chosen])  # what the queue dialog stores (gui/form.py _editQueueParams)
    submitted = time.time()
    project.launchProtocol(protocol)
    return protocol, submitted


def refresh(project):
    """One runs-tree refresh, as the GUI's timer does: {protocol id: protocol}."""
    return {run.getObjId(): run for run in project.getRuns(refresh=True, checkPids=True)}


def follow(project, protocols, timeout=120.0, interval=0.5, until=FINAL):
    """Refresh until every protocol's status is in `until`; returns {id: [statuses seen, in order]}."""
    seen = {p.getObjId(): [p.getStatus()] for p in protocols}
    deadline = time.monotonic() + timeout
    while True:
        runs = refresh(project)
        for pid, statuses in seen.items():
            status = runs[pid].getStatus()
            if statuses[-1] != status:
                statuses.append(status)
        if all(statuses[-1] in until for statuses in seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(interval)


def slurm_job(job_id):
    """`scontrol show job -d` fields for one job ({} once Slurm has forgotten it)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-d", str(job_id)], capture_output=True, text=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def granted_gpus(record, job):
    """GPUs the job saw on its node (Slurm's SLURM_GPUS_ON_NODE, else CUDA_VISIBLE_DEVICES), else what Slurm
    recorded as allocated (gres/gpu in AllocTRES, when accounting tracks it)."""
    if record.get("SLURM_GPUS_ON_NODE"):
        return int(record["SLURM_GPUS_ON_NODE"])
    if record.get("CUDA_VISIBLE_DEVICES"):
        return len(record["CUDA_VISIBLE_DEVICES"].split(","))
    if record:
        return 0
    match = re.search(r"gres/gpu(?::[^=,]+)?=(\d+)", job.get("AllocTRES", ""))
    return int(match.group(1)) if match else None


def error_message(project, run):
    """The run's error. A refresh can copy a run's "failed" from its run.db before the message lands there,
    and pyworkflow re-reads only active runs: then read the message from the run's own database, as Scipion
    does when the project is opened again."""
    message = run.getErrorMessage()
    if message or run.getStatus() != "failed":
        return message or None
    from pyworkflow.protocol import getProtocolFromDb

    own = getProtocolFromDb(project.path, run.getDbPath(), run.getObjId())
    try:
        return own.getErrorMessage() or None
    finally:
        own.getProject().closeMapper()
        own.closeMappers()


def report(project, protocol, submitted, statuses, job=None):
    run = refresh(project)[protocol.getObjId()]
    job_ids = [str(j) for j in run.getJobIds()]
    record = {}
    try:
        with open(run._getExtraPath("check.json")) as f:
            record = json.load(f)
    except OSError:
        pass
    if job is None:
        job = slurm_job(job_ids[0]) if job_ids else {}
        deadline = time.monotonic() + 20  # the protocol writes "finished" just before its job ends
        while job.get("JobState") in ("PENDING", "RUNNING", "COMPLETING") and time.monotonic() < deadline:
            time.sleep(0.3)
            job = slurm_job(job_ids[0])
    queue, values = run.getQueueParams()
    return {
        "queue": queue,
        "gpus_asked": int(values.get("GPU_COUNT", 0)),
        "gpus_granted": granted_gpus(record, job),
        "node": record.get("host") or job.get("NodeList"),
        "job_id": job_ids[0] if job_ids else None,
        "slurm_state": job.get("JobState"),
        "status": run.getStatus(),
        "statuses": statuses,
        "error": error_message(project, run),
        "submit": submitted,
        "start": record.get("start"),
        "finish": record.get("end"),
        "record": record,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="ScipionCloudClusterCheck")
    parser.add_argument(
        "--queue", action="append", default=[], help="QUEUE or QUEUE:GPUS (default: every queue)"
    )
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    project = open_project(args.project)
    queues = args.queue or list(project.getHostConfig("localhost").getQueueSystem().getQueues())
    launched = []
    for spec in queues:
        name, _, gpus = spec.partition(":")
        values = {"GPU_COUNT": gpus} if gpus else {}
        launched.append(launch(project, name, values, seconds=args.seconds))
    statuses = follow(project, [p for p, _ in launched], timeout=args.timeout)
    results = [report(project, p, t, statuses[p.getObjId()]) for p, t in launched]
    json.dump({"project": project.path, "queues": results}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if all(r["status"] == "finished" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
