"""`scipioncloud cluster check`: one tiny Scipion protocol (ProtClusterCheck, from the scipioncloud-check
plugin the scipion role installs) on every queue, launched and followed by Scipion's own code in Scipion's
own Python, and per queue: submit -> start -> finish times and whether the GPUs asked for were granted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from scipioncloud.errors import OperationFailed

DEFAULT_SCIPION = Path("/opt/scipion/scipion3")


def scipion_argv(scipion: Path) -> list[str]:
    """Scipion's launcher runs Python as `scipion3 python ...`; a bare interpreter runs directly."""
    return [str(scipion)] if Path(scipion).name.startswith("python") else [str(scipion), "python"]


def run_check(
    scipion: Path = DEFAULT_SCIPION,
    *,
    queues: list[str] | None = None,
    project: str = "ScipionCloudClusterCheck",
    seconds: float = 2.0,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> list[dict]:
    argv = [*scipion_argv(scipion), "-m", "scipioncloudcheck.run", "--project", project]
    argv += ["--seconds", str(seconds), "--timeout", str(timeout)]
    for queue in queues or []:
        argv += ["--queue", queue]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout + 120, check=False)
    try:
        answer = json.loads(result.stdout[result.stdout.index("{") :])
    except ValueError:
        raise OperationFailed(
            f"the check protocol did not report (exit {result.returncode}): {result.stderr.strip()[-1500:]}"
        ) from None
    return [summarise(item) for item in answer["queues"]]


def summarise(item: dict) -> dict:
    """Seconds from submission to start (queue wait, node boot included) and from start to finish."""
    submit, start, finish = item.get("submit"), item.get("start"), item.get("finish")
    granted, asked = item.get("gpus_granted"), item.get("gpus_asked")
    return {
        "queue": item["queue"],
        "status": item["status"],
        "node": item.get("node"),
        "job_id": item.get("job_id"),
        "gpus_asked": asked,
        "gpus_granted": granted,
        "gpus_ok": granted == asked,
        "wait_s": round(start - submit, 2) if start and submit else None,
        "run_s": round(finish - start, 2) if finish and start else None,
        "total_s": round(finish - submit, 2) if finish and submit else None,
        "error": item.get("error"),
    }
