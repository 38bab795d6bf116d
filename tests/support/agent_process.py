"""Agent configs that keep every path in a temporary folder, and the real `scipioncloud-agent serve` process
on a free loopback port (start_agent/stop_agent). Fixtures built on these are in tests/conftest.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import requests

from tests.support import processes
from tests.support.paths import VENV_BIN, free_port

TOKEN = "test-token-0123456789abcdef"


def agent_config_dict(tmp: Path, **sections) -> dict:
    """A config that keeps every path inside `tmp`; sections given override whole keys."""
    (tmp / "state").mkdir(exist_ok=True)
    (tmp / "mnt").mkdir(exist_ok=True)
    (tmp / "fstab").touch()
    base = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "token_file": str(tmp / "agent.token")},
        "storage": {
            "state_dir": str(tmp / "state"),
            "fstab": str(tmp / "fstab"),
            "mount_roots": [str(tmp / "mnt")],
            "prewarm_auto": False,
        },
        "desktop": {"vnc": "tigervnc"},
        # The agent looks up its EC2 identity at start: keep it on loopback, where nothing listens there.
        "host": {"imds_url": f"http://127.0.0.1:{free_port()}"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base


def write_toml(path: Path, data: dict) -> Path:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclasses.dataclass
class AgentProcess:
    url: str
    token: str
    config_path: Path
    process: subprocess.Popen
    log: object = None
    contract: dict | None = None  # the agent's OpenAPI document: every JSON answer is checked against it

    def get(self, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return self._checked(requests.get(self.url + path, headers=headers, timeout=10, **kw))

    def request(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return self._checked(requests.request(method, self.url + path, headers=headers, timeout=60, **kw))

    def _checked(self, response: requests.Response) -> requests.Response:
        path = requests.utils.urlparse(response.url).path
        is_json = response.headers.get("Content-Type", "").startswith("application/json")
        if self.contract is not None and path.startswith("/v1/") and is_json:
            from tests.support.openapi_contract import assert_matches

            method = response.request.method or "GET"
            assert_matches(self.contract, method, path, response.status_code, response.json())
        return response


def start_agent(tmp: Path, config: dict, env: dict | None = None, contract: bool = False) -> AgentProcess:
    """Start the real `scipioncloud-agent serve` and wait until /healthz answers; with `contract`, every
    JSON answer of its routes is checked against its own OpenAPI document (tests/support/openapi_contract)."""
    path = write_toml(tmp / "agent.toml", config)
    bind = config["server"]["bind"]
    log = (tmp / "agent.log").open("w")
    process = subprocess.Popen(
        [str(VENV_BIN / "scipioncloud-agent"), "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://{bind}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.close()
            raise RuntimeError(f"agent exited with {process.returncode}: {(tmp / 'agent.log').read_text()}")
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                token = Path(config["server"]["token_file"]).read_text().strip()
                agent = AgentProcess(url, token, path, process, log)
                if contract:
                    agent.contract = agent.get("/openapi.json").json()
                return agent
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    log.close()
    raise RuntimeError(f"agent did not answer on {url}: {(tmp / 'agent.log').read_text()}")


def stop_agent(agent: AgentProcess) -> None:
    processes.stop(agent.process)
    if agent.log is not None and not agent.log.closed:
        agent.log.close()
