"""The OpenAPI document is the contract: schemathesis (PyPI) generates requests from it, sends them to the
real `scipioncloud-agent serve` on a free loopback port, and runs every check it has (`--checks all`: no 5xx,
every status and content type declared, bodies match their schemas, invalid data rejected, valid data
accepted, auth enforced, 405 for undeclared methods). Bounded: a few examples per operation and a time limit.
Every file the agent could write (fstab, state, desktop passwords) is inside the test's tmp dir."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, agent_config_dict, start_agent, stop_agent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a loop device for the volume routes"),
]
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8"))
TIME_LIMIT_S = 240
PROJECT = "demo"


def test_every_route_keeps_the_openapi_contract(tmp_path):
    st = shutil.which("st", path=str(VENV_BIN))
    assert st, "schemathesis is missing from .venv: `make setup` installs the test extra"
    desktop = {
        "vnc": "tigervnc",
        "user": "nobody",
        "manager": "agent",  # no systemd here: the agent would start the session itself...
        "session_script": str(tmp_path / "no-session-script"),  # ...with a script that does not exist
        "display": 77,
        "passwd_file": str(tmp_path / "desktop" / "passwd"),
        "htpasswd_file": str(tmp_path / "desktop" / "htpasswd"),
        "info_file": str(tmp_path / "desktop" / "info.txt"),
        "env_file": str(tmp_path / "desktop" / "desktop.env"),
        "start_timeout_s": 2,
    }
    # One project under an archive policy, so the data routes reach their own answers rather than a 404: its
    # folder holds no Scipion project yet (plan and archive: 503, restore: the quote of nothing).
    policy = tmp_path / "data-policy.toml"
    policy.write_text(
        f'[[project]]\nname = "{PROJECT}"\npath = "{tmp_path / PROJECT}"\nbucket = "lab-archive"\n'
    )
    (tmp_path / PROJECT).mkdir()
    config = agent_config_dict(
        tmp_path, desktop=desktop, storage={"include_loop": True}, data={"policy_file": str(policy)}
    )
    image = tmp_path / "volume.img"
    with open(image, "wb") as handle:
        handle.truncate(16 * 1024 * 1024)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    agent = start_agent(tmp_path, config)
    try:
        schema = tmp_path / "openapi.json"
        schema.write_text(json.dumps(agent.get("/openapi.json").json()))
        result = subprocess.run(
            [
                st,
                "--config-file",
                str(Path(__file__).with_name("schemathesis.toml")),
                "run",
                str(schema),
                "--url",
                agent.url,
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {agent.token}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--request-timeout",
                "30",
                "--generation-deterministic",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT_S,
            check=False,
            env={
                **os.environ,
                "SCIPIONCLOUD_TEST_LOOP": Path(loop).name,
                "SCIPIONCLOUD_TEST_PROJECT": PROJECT,
            },
            cwd=tmp_path,  # schemathesis keeps its .schemathesis/ cache in the working folder
        )
    finally:
        stop_agent(agent)
        subprocess.run(["losetup", "-d", loop], check=False)
    output = result.stdout + result.stderr
    print(output[-6000:])
    assert result.returncode == 0, output[-6000:]
    summary = re.search(r"(\d+) passed", output)
    assert summary and int(summary.group(1)) > 0, output[-3000:]
    # every operation of the document was tested, the desktop's and the data's among them, each 2xx answer
    # against its own schema (tests/agent/test_app_basics.py::test_every_json_answer_has_its_own_schema)
    paths = json.loads(schema.read_text())["paths"]
    operations = sum(1 for ops in paths.values() for method in ops if method != "parameters")
    ours = {"/v1/desktop", "/v1/desktop/logout", "/v1/data", "/v1/data/projects/{project}/restore"}
    assert ours <= set(paths)
    tested = re.search(r"Tested: (\d+)", output)
    assert tested and int(tested.group(1)) == operations, output[-3000:]
