"""The agent's contract is written once (agent/config.py) and read by every side: the mount `format`
default of the agent's CLI, its HTTP API and the operator's CLI, and the port and token path the
operator's tunnel uses."""

from __future__ import annotations

import inspect
from pathlib import Path

from agent import cli as agent_cli
from agent import config
from scipioncloud import agent_client, tunnel
from scipioncloud.commands import volumes as operator_volumes


def option(command, name: str):
    return next(p for p in command.params if p.name == name)


def test_one_default_for_the_mount_format(client, auth):
    assert config.DEFAULT_MOUNT_FORMAT == "never"  # never format unless asked (a disk may hold data)
    agent_side = option(agent_cli.mount, "format_")
    operator_side = option(operator_volumes.mount, "format_")
    assert agent_side.default == operator_side.default == config.DEFAULT_MOUNT_FORMAT
    assert list(agent_side.type.choices) == list(operator_side.type.choices) == list(config.MOUNT_FORMATS)
    signature = inspect.signature(agent_client.AgentClient.mount)
    assert signature.parameters["format_"].default == config.DEFAULT_MOUNT_FORMAT
    document = client.get("/openapi.json", headers=auth).json
    body = document["paths"]["/v1/volumes/{vol}/mount"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["format"]["default"] == config.DEFAULT_MOUNT_FORMAT


def test_operator_tunnel_uses_the_agents_port_and_token_path():
    server = config.ServerConfig()
    assert tunnel.AGENT_PORT == int(server.bind.rsplit(":", 1)[1]) == config.DEFAULT_PORT
    assert Path(tunnel.TOKEN_FILE) == server.token_file
