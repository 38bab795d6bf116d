"""Run inside Scipion's Python (pyworkflow + scipioncloudcheck installed), in the cluster's submit namespace.
Drives the scenarios of tests/cluster/test_scipion_slurm.py through pyworkflow's own project code and
prints one JSON object with what Scipion reported for each.

    python scipion_queue_driver.py PROJECT_NAME OUT.json
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from scipioncloudcheck import run

FAST = 3.0  # seconds a "normal" check protocol runs: long enough for a refresh to see it running


def wait_running(project, protocol, timeout=90):
    seen = run.follow(
        project, [protocol], timeout=timeout, until=("running", "finished", "failed", "aborted")
    )
    return seen[protocol.getObjId()]


def squeue_state(job_id):
    """The job's state as CHECK_COMMAND sees it (squeue %T)."""
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%T", f"--jobs={job_id}"],
                         capture_output=True, text=True).stdout  # fmt: skip
    return out.strip()


def watch(project, protocol, job_id, until, timeout=90):
    """GUI-style refreshes until `until()` holds; each time, the pair (Slurm state, Scipion status) seen."""
    pairs = []
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        state = squeue_state(job_id)
        status = run.refresh(project)[protocol.getObjId()].getStatus()
        if not pairs or pairs[-1] != [state, status]:
            pairs.append([state, status])
        time.sleep(0.2)
    return pairs


def scontrol(*argv):
    done = subprocess.run(["scontrol", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"scontrol {' '.join(argv)}: {done.stderr}")


def resume(node):
    """Back to service. slurmd kept running, so with ReturnToService=2 Slurm may have done it already when the
    node answered again (RESUME is then refused: only a DOWN or DRAINED node can resume)."""
    state = subprocess.run(["sinfo", "--noheader", "--nodes", node, "--format=%T"], capture_output=True,
                           text=True).stdout  # fmt: skip
    if "down" in state or "drain" in state:
        scontrol("update", f"nodename={node}", "state=resume")


def pending_then_running(project):
    """cpu1, the cpu queue's only node, holds one default cpu job (its memory is the whole node's): a second
    one waits PENDING while Scipion refreshes, then runs."""
    first, _ = run.launch(project, "cpu", seconds=8, label="holds cpu1")
    wait_running(project, first)
    second, submitted = run.launch(project, "cpu", seconds=FAST, label="waits for cpu1")
    job_id = str(second.getJobIds()[0])
    reasons = []  # why Slurm keeps it waiting (None until the scheduler has looked at it)

    def started():
        job = run.slurm_job(job_id)
        reasons.append(job.get("Reason"))
        return job.get("JobState") != "PENDING"

    pairs = watch(project, second, job_id, started, timeout=60)
    seen = run.follow(project, [first, second], timeout=90)
    result = run.report(project, second, submitted, seen[second.getObjId()])
    result.update(while_waiting=pairs, pending_reasons=sorted(set(map(str, reasons))),
                  first_finish=run.report(project, first, 0, [])["finish"])  # fmt: skip
    return result


def requeued(project, how):
    """A running job on the Spot queue goes back to the queue under the same id: `scontrol requeue` (what
    ParallelCluster's requeue amounts to), or its node lost (state DOWN, as when Spot reclaims it)."""
    protocol, submitted = run.launch(project, "gpu-spot", seconds=6, label=f"spot {how}")
    before = wait_running(project, protocol)
    job_id = str(protocol.getJobIds()[0])
    requeued_at = time.time()
    if how == "requeue":
        scontrol("requeue", job_id)
    else:
        scontrol("update", "nodename=gpu2", "state=down", "reason=spot reclaimed")
    # The job is PENDING again; Slurm makes a requeued job eligible only after a delay (EligibleTime, about
    # two minutes in 22.05), which an administrator may lift: the test does, to stay short.
    pairs = watch(project, protocol, job_id, lambda: squeue_state(job_id) == "PENDING", timeout=30)
    pairs += watch(project, protocol, job_id, lambda: False, timeout=3)
    job = run.slurm_job(job_id)
    if how != "requeue":
        resume("gpu2")  # the replacement node joins
    scontrol("update", f"jobid={job_id}", "starttime=now")
    pairs += watch(project, protocol, job_id, lambda: squeue_state(job_id) != "PENDING", timeout=60)
    seen = before + run.follow(project, [protocol], timeout=90)[protocol.getObjId()][1:]
    result = run.report(project, protocol, submitted, seen)
    fields = ("JobState", "Restarts", "Requeue", "Reason", "JobId")
    result.update(
        while_requeued=pairs,
        requeued_at=requeued_at,
        requeued_job={k: job.get(k) for k in fields},
        job_ids=[str(j) for j in protocol.getJobIds()],
    )
    result["script"] = Path(protocol.getSubmitDict()["JOB_SCRIPT"]).read_text()
    return result


def node_lost_without_requeue(project):
    """A cpu queue job (--no-requeue) whose node is lost ends NODE_FAIL; Scipion must report it failed."""
    protocol, submitted = run.launch(project, "cpu", seconds=60, label="node lost")
    seen = wait_running(project, protocol)
    job_id = str(protocol.getJobIds()[0])
    scontrol("update", "nodename=cpu1", "state=down", "reason=node lost")
    try:
        seen += run.follow(project, [protocol], timeout=60)[protocol.getObjId()][1:]
        result = run.report(project, protocol, submitted, seen)
        result["squeue_state"] = squeue_state(job_id)
    finally:
        resume("cpu1")
    return result


def main(name, out_path):
    project = run.open_project(name)
    results = {}

    # Launched together: Slurm queues what does not fit (gpu1 holds the only 2-GPU slot).
    batch = {
        "gpu_default": run.launch(project, "gpu", seconds=FAST),
        "gpu_two": run.launch(project, "gpu", {"GPU_COUNT": 2}, seconds=FAST),
        "cpu_default": run.launch(project, "cpu", seconds=FAST),
        "fails": run.launch(project, "cpu", seconds=0.5, fail_with="check protocol failed on purpose"),
        "too_much_memory": run.launch(project, "cpu", {"JOB_MEMORY": 999999}),
    }
    statuses = run.follow(project, [p for p, _ in batch.values()], timeout=240, interval=0.3)
    for key, (protocol, submitted) in batch.items():
        results[key] = run.report(project, protocol, submitted, statuses[protocol.getObjId()])
        results[key]["script"] = Path(protocol.getSubmitDict()["JOB_SCRIPT"]).read_text()

    # Cancel from Scipion (the GUI's Stop): scancel through CANCEL_COMMAND.
    protocol, submitted = run.launch(project, "gpu", seconds=120)
    seen = wait_running(project, protocol)
    project.stopProtocol(protocol)
    seen += run.follow(project, [protocol], timeout=30)[protocol.getObjId()][1:]
    results["cancelled"] = run.report(project, protocol, submitted, seen)

    # The job dies without the protocol telling Scipion (node lost, time limit, an admin's scancel).
    protocol, submitted = run.launch(project, "cpu", seconds=120)
    seen = wait_running(project, protocol)
    job_id = str(protocol.getJobIds()[0])
    # SIGKILL: the protocol gets no chance to write its own status; only the queue check can notice.
    killed = subprocess.run(["scancel", "--full", "--signal=KILL", job_id], capture_output=True, text=True)
    if killed.returncode != 0:
        queue = subprocess.run(["squeue", "--states=all"], capture_output=True, text=True).stdout
        raise SystemExit(f"scancel {job_id}: {killed.stderr} {seen} {queue}")
    deadline = time.monotonic() + 30
    while run.slurm_job(job_id).get("JobState") in ("RUNNING", "COMPLETING") and time.monotonic() < deadline:
        time.sleep(0.3)
    seen += run.follow(project, [protocol], timeout=60)[protocol.getObjId()][1:]
    results["killed_outside"] = run.report(project, protocol, submitted, seen)

    results["pending"] = pending_then_running(project)
    results["requeue"] = requeued(project, "requeue")
    results["spot_node_lost"] = requeued(project, "node-lost")
    results["node_lost"] = node_lost_without_requeue(project)

    with open(out_path, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
