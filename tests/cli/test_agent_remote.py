"""The agent side of `status` and `volumes mount`: the client against a real agent process, and the same
through a real `ssh -L` tunnel to an sshd on 127.0.0.1 (private mount namespace for its /run/sshd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from scipioncloud import agent_client, tunnel
from scipioncloud.errors import BadInput, OperationFailed
from tests.conftest import agent_config_dict, free_port, start_agent, stop_agent

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(tmp_path):
    process = start_agent(tmp_path, agent_config_dict(tmp_path))
    yield process
    stop_agent(process)


def routes(agent) -> set[str]:
    return set(agent.get("/openapi.json").json()["paths"])


def test_summary_from_a_real_agent(agent):
    summary = agent_client.AgentClient(agent.url, agent.token).summary()
    assert summary["agent"]["status"] == "ok"
    served = routes(agent)
    for part, path in agent_client.SUMMARY_PATHS.items():
        if path in served:  # the capability exists in this build of the agent: its data, not a placeholder
            assert "unavailable" not in summary[part]
        else:
            assert summary[part] == {"unavailable": f"{path} answered 404"}
    lines = agent_client.describe_summary(summary)
    assert lines[0].startswith("agent ") and lines[0].endswith(": ok")


def test_wrong_token_and_no_agent_are_clear_errors(agent):
    with pytest.raises(OperationFailed, match="refused the token"):
        agent_client.AgentClient(agent.url, "wrong-token").get("/openapi.json")
    with pytest.raises(OperationFailed, match="cannot reach the agent"):
        agent_client.AgentClient(f"http://127.0.0.1:{free_port()}", agent.token, timeout_s=2).summary()


def test_mount_asks_the_agent(agent):
    client = agent_client.AgentClient(agent.url, agent.token)
    assert "/v1/volumes/{vol}/mount" in routes(agent)
    # the agent looks the id up among this machine's block devices, finds none, and answers 404
    with pytest.raises(BadInput, match=r"vol-0123456789abcdef0"):
        client.mount("vol-0123456789abcdef0", "/data", format_="never")


def test_describe_summary_of_a_busy_instance():
    lines = agent_client.describe_summary(
        {
            "agent": {"status": "ok", "version": "0.1.0"},
            "gpus": {
                "nvml": {"state": "ok"},
                "gpus": [
                    {
                        "index": 0,
                        "name": "Tesla T4",
                        "utilization_gpu_pct": 87,
                        "memory_used_bytes": 1,
                        "memory_total_bytes": 2,
                    }
                ],
            },
            "prewarm": {
                "jobs": [{"device": "/dev/nvme1n1", "state": "running", "bytes_done": 25, "bytes_total": 100}]
            },
            "idle": {"idle": False, "since": "2026-11-24T10:00:00Z", "reasons": ["GPU 0 at 87%"]},
        }
    )
    assert "GPU 0 Tesla T4: 87% busy, 1 of 2 bytes" in lines
    assert "pre-warm /dev/nvme1n1: running 25%" in lines
    assert lines[-1] == "idle: False since 2026-11-24T10:00:00Z (GPU 0 at 87%)"


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on 127.0.0.1 accepting one key for the current user."""
    if not (shutil.which("unshare") and Path("/usr/sbin/sshd").exists()) or os.geteuid() != 0:
        pytest.skip("needs root, unshare and openssh-server (tools/apt-packages.txt)")
    d = tmp_path / "ssh"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "user"], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nAllowTcpForwarding local\nPermitRootLogin prohibit-password\n"
    )
    config = d / "sshd_config"
    log = (d / "sshd.log").open("w")
    # sshd insists on /run/sshd; give it a private /run instead of touching the machine's
    process = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && exec /usr/sbin/sshd -D -e -f "
            + str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    target = tunnel.SshTarget(
        host="127.0.0.1",
        user="root",
        key_file=d / "user",
        port=port,
        sudo=False,
        options=("StrictHostKeyChecking=accept-new", f"UserKnownHostsFile={d / 'known_hosts'}"),
    )
    deadline = time.monotonic() + 10
    while "listening" not in (d / "sshd.log").read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    try:
        yield target
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_status_through_a_real_ssh_tunnel(sshd, agent):
    token_file = str(Path(agent.config_path).parent / "agent.token")
    token = tunnel.read_token(sshd, token_file=token_file)
    assert token == agent.token
    port = int(agent.url.rsplit(":", 1)[1])
    with tunnel.open_tunnel(sshd, remote_port=port) as url:
        assert url != agent.url
        summary = agent_client.AgentClient(url, token).summary()
    assert summary["agent"]["status"] == "ok"


def test_tunnel_failure_is_reported(sshd, tmp_path):
    broken = tunnel.SshTarget(
        host="127.0.0.1",
        user="root",
        key_file=tmp_path / "missing-key",
        port=sshd.port,
        sudo=False,
        options=sshd.options,
    )
    with pytest.raises(OperationFailed, match="could not read the agent token"):
        tunnel.read_token(broken)
    with (
        pytest.raises(OperationFailed, match=r"ssh tunnel to 127\.0\.0\.1 ended"),
        tunnel.open_tunnel(broken, remote_port=free_port()),
    ):
        pass


def test_status_command_end_to_end(cli, our_ami, key_pair, sshd, agent, monkeypatch):
    """The real `scipioncloud status`: instance looked up in the emulator, ssh to our sshd (standing in for
    the instance's), token read over ssh, summary through the tunnel."""
    from tests.cli.conftest import launch

    launched = launch(cli, "--name", "cryo-status")
    monkeypatch.setattr(tunnel, "AGENT_PORT", int(agent.url.rsplit(":", 1)[1]))
    monkeypatch.setattr(tunnel, "TOKEN_FILE", str(Path(agent.config_path).parent / "agent.token"))
    ssh = [
        "--ssh-host",
        "127.0.0.1",
        "--ssh-port",
        str(sshd.port),
        "--user",
        "root",
        "--key",
        str(sshd.key_file),
        "--ssh-option",
        sshd.options[1],
    ]
    summary = cli.json("status", "cryo-status", *ssh)
    assert summary["agent"]["status"] == "ok"
    text = cli("status", launched["instance_id"], *ssh)
    assert text.exit_code == 0 and text.stdout.startswith("agent ")
    assert agent.token not in text.output  # the token is never shown

    unknown = cli("volumes", "mount", "cryo-status", "vol-0123456789abcdef0", "/data", *ssh)
    assert unknown.exit_code == 2 and "InvalidVolume.NotFound" in unknown.stderr  # checked before any ssh
    volume = cli.json("volumes", "create", "--size", "10", "--instance", "cryo-status")["volume_id"]
    # the request reaches the agent through the tunnel; this machine has no such EBS device, so it refuses
    mounted = cli("volumes", "mount", "cryo-status", volume, "/data", *ssh)
    assert mounted.exit_code == 2
    assert f"agent /v1/volumes/{volume}/mount:" in mounted.stderr
