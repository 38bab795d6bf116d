"""Drive the real `pcluster` command (aws-parallelcluster 3): create, describe, delete. It answers JSON on
stdout, also for errors ({"message": ..., "configurationValidationErrors": [...]}), so one function runs it
and turns a refusal into a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from scipioncloud.errors import BadInput, OperationFailed

DRYRUN_PASSED = "Request would have succeeded, but DryRun flag is set."


def find(pcluster: str | Path | None = None) -> Path:
    """The pcluster command: the one given, $PCLUSTER, or the one on PATH."""
    found = pcluster or os.environ.get("PCLUSTER") or shutil.which("pcluster")
    if not found or not Path(found).exists():
        raise BadInput(
            "the pcluster command is missing: pip install aws-parallelcluster (in its own venv), then pass "
            "--pcluster PATH or set PCLUSTER"
        )
    return Path(found)


def create_argv(
    pcluster: Path,
    name: str,
    config: Path,
    region: str,
    *,
    dryrun: bool = False,
    suppress: tuple[str, ...] = (),
) -> list[str]:
    argv = [str(pcluster), "create-cluster", "--cluster-name", name, "--cluster-configuration", str(config)]
    argv += ["--region", region, "--rollback-on-failure", "false"]
    if suppress:  # pcluster's own switch: type:NameOfValidator
        argv += ["--suppress-validators", *(f"type:{name}" for name in suppress)]
    return argv + (["--dryrun", "true"] if dryrun else [])


def describe_argv(pcluster: Path, name: str, region: str) -> list[str]:
    return [str(pcluster), "describe-cluster", "--cluster-name", name, "--region", region]


def delete_argv(pcluster: Path, name: str, region: str) -> list[str]:
    return [str(pcluster), "delete-cluster", "--cluster-name", name, "--region", region]


def _message(answer: dict) -> str:
    parts = [answer.get("message", "")]
    for item in answer.get("configurationValidationErrors") or answer.get("validationMessages") or []:
        parts.append(f"{item.get('level', '')} {item.get('type', '')}: {item.get('message', '')}".strip())
    return "; ".join(p for p in parts if p)


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> dict:
    """Run pcluster; its JSON answer, or BadInput/OperationFailed carrying pcluster's own message."""
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    try:
        answer = json.loads(result.stdout) if result.stdout.strip() else {}
    except json.JSONDecodeError:
        answer = {"message": result.stdout.strip()}
    if answer.get("message", "").startswith(DRYRUN_PASSED):
        return answer  # pcluster exits 1 on a dry run that would have succeeded
    if result.returncode != 0:
        message = _message(answer) or result.stderr.strip()[-1000:] or f"exit status {result.returncode}"
        if "does not exist" in message or "not found" in message.lower():
            raise BadInput(f"pcluster {argv[1]}: {message}")
        raise OperationFailed(f"pcluster {argv[1]}: {message}")
    return answer
