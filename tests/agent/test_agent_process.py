"""The real `scipioncloud-agent serve` process over real HTTP on a free loopback port."""

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support import roles
from tests.support.agent_process import agent_config_dict, start_agent, stop_agent, write_toml
from tests.support.paths import VENV_BIN

pytestmark = pytest.mark.integration


def test_token_is_made_mode_0600_and_never_logged(agent_process, tmp_path):
    token_file = tmp_path / "agent.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(agent_process.token) >= 32
    requests.get(agent_process.url + "/openapi.json", headers={"Authorization": "Bearer nope"}, timeout=5)
    agent_process.get("/openapi.json")
    stop_agent(agent_process)
    assert agent_process.token not in (tmp_path / "agent.log").read_text()


def test_auth_over_http(agent_process):
    assert requests.get(agent_process.url + "/openapi.json", timeout=5).status_code == 401
    response = agent_process.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")


def test_error_bodies_over_http(agent_process):
    missing = agent_process.get("/v1/missing")
    assert missing.status_code == 404 and missing.json()["status"] == 404
    wrong = agent_process.request("PUT", "/healthz")
    assert wrong.status_code == 405 and wrong.json()["status"] == 405


def test_host_header_check_over_http(agent_process):
    response = agent_process.get("/healthz", headers={"Host": "attacker.example:9777"})
    assert response.status_code == 403


def test_existing_token_is_kept_and_loose_mode_refused(tmp_path):
    config = agent_config_dict(tmp_path)
    token_file = Path(config["server"]["token_file"])
    token_file.write_text("a-token-made-before-0123456789\n")
    token_file.chmod(0o600)
    agent = start_agent(tmp_path, config)
    try:
        assert agent.token == "a-token-made-before-0123456789"
        assert agent.get("/openapi.json").status_code == 200
    finally:
        stop_agent(agent)
    token_file.chmod(0o644)
    path = write_toml(tmp_path / "agent.toml", config)
    result = subprocess.run(
        [str(VENV_BIN / "scipioncloud-agent"), "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "chmod 600" in result.stderr
    assert "a-token-made-before" not in result.stderr + result.stdout


def test_bad_config_is_a_clear_usage_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nbnd = '1'\n")
    result = subprocess.run(
        [str(VENV_BIN / "scipioncloud-agent"), "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown key server.bnd" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = roles.render("agent", "scipioncloud-agent.service.j2")
    assert "ExecStart=/opt/scipioncloud/venv/bin/scipioncloud-agent serve" in unit
    # the venv and config paths follow the role's variables; verify checks that ExecStart exists: render
    # the unit with this checkout's venv for the check.
    config = write_toml(tmp_path / "agent.toml", agent_config_dict(tmp_path))
    local = roles.write(
        "agent",
        "scipioncloud-agent.service.j2",
        tmp_path / "scipioncloud-agent.service",
        agent_venv=str(VENV_BIN.parent),
        agent_config_file=str(config),
    )
    assert f"ExecStart={VENV_BIN}/scipioncloud-agent serve --config {config}\n" in local.read_text()
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if local.name in line or "Unknown" in line]
    assert result.returncode == 0 and not problems, result.stderr
