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

    with open(out_path, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
