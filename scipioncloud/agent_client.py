"""Talk to an instance's agent (contract v1 in ARCHITECTURE.md) over a base URL: through an SSH tunnel in
production (tunnel.py), directly on 127.0.0.1 in tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from agent.config import DEFAULT_MOUNT_FORMAT
from scipioncloud.errors import BadInput, OperationFailed

SUMMARY_PATHS = {"gpus": "/v1/gpus", "prewarm": "/v1/prewarm", "idle": "/v1/idle"}


class AgentClient:
    def __init__(self, base_url: str, token: str, timeout_s: float = 30) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"agent URL must be http(s): {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token  # never logged or shown
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        """(status, parsed JSON) for any answer; OperationFailed when the agent cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310 - http(s) only
        req.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:  # noqa: S310 - our own URL
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _json(exc.read())
        except (urllib.error.URLError, OSError) as exc:
            raise OperationFailed(f"cannot reach the agent at {self.base_url}: {exc}") from None

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        self._raise_for(status, body, path)
        return body

    def _raise_for(self, status: int, body: Any, path: str) -> None:
        if status == 401:
            raise OperationFailed(
                "the agent refused the token (401); it changes when the instance is rebuilt"
            )
        if status >= 400:
            message = body.get("error") if isinstance(body, dict) else body
            error = BadInput if status in (400, 404, 409) else OperationFailed
            raise error(f"agent {path}: {message} ({status})")

    def summary(self) -> dict[str, Any]:
        """Health, GPUs, pre-warm jobs and idle state; a part the agent lacks is reported, not fatal."""
        status, health = self.request("GET", "/healthz")
        if status != 200:
            raise OperationFailed(f"agent /healthz answered {status}")
        result: dict[str, Any] = {"agent": health}
        for name, path in SUMMARY_PATHS.items():
            status, body = self.request("GET", path)
            if status == 200:
                result[name] = body
            else:
                self._raise_for(status, body, path) if status == 401 else None
                result[name] = {"unavailable": f"{path} answered {status}"}
        return result

    def post(self, path: str, body: dict | None = None) -> Any:
        status, answer = self.request("POST", path, body)
        self._raise_for(status, answer, path)
        return answer

    def mount(
        self, volume: str, mountpoint: str, fstype: str = "ext4", format_: str = DEFAULT_MOUNT_FORMAT
    ) -> Any:
        """Ask the agent to mount `volume` (EBS id or device name), formatting it only if blank when asked."""
        path = f"/v1/volumes/{urllib.parse.quote(volume, safe='')}/mount"
        status, body = self.request(
            "POST", path, {"mountpoint": mountpoint, "fstype": fstype, "format": format_}
        )
        self._raise_for(status, body, path)
        return body


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode("utf-8", "replace")


def describe_summary(summary: dict[str, Any]) -> list[str]:
    """Short human lines for `scipioncloud status`."""
    lines = [f"agent {summary['agent'].get('version', '?')}: {summary['agent'].get('status', '?')}"]
    gpus = summary.get("gpus", {})
    if "unavailable" in gpus:
        lines.append(f"GPUs: {gpus['unavailable']}")
    else:
        state = gpus.get("nvml", {}).get("state", "?")
        for gpu in gpus.get("gpus", []):
            lines.append(
                f"GPU {gpu.get('index', '?')} {gpu.get('name', '')}: "
                f"{gpu.get('utilization_gpu_pct', '?')}% busy, "
                f"{gpu.get('memory_used_bytes', '?')} of {gpu.get('memory_total_bytes', '?')} bytes"
            )
        if not gpus.get("gpus"):
            lines.append(f"GPUs: none visible (NVML {state})")
    prewarm = summary.get("prewarm", {})
    if "unavailable" in prewarm:
        lines.append(f"pre-warm: {prewarm['unavailable']}")
    else:
        jobs = prewarm.get("jobs", prewarm if isinstance(prewarm, list) else [])
        for job in jobs:
            done, total = job.get("bytes_done", 0), job.get("bytes_total") or 0
            pct = f"{100 * done / total:.0f}%" if total else "?"
            lines.append(f"pre-warm {job.get('device', job.get('id', '?'))}: {job.get('state', '?')} {pct}")
        if not jobs:
            lines.append("pre-warm: no jobs")
    idle = summary.get("idle", {})
    if "unavailable" in idle:
        lines.append(f"idle: {idle['unavailable']}")
    else:
        lines.append(
            f"idle: {idle.get('idle')} since {idle.get('since')} ({'; '.join(idle.get('reasons', []))})"
        )
    return lines
