"""`scipioncloud usage` and `scipioncloud keep-running`: the instance looked up in the emulator, ssh to a real
sshd on 127.0.0.1 standing in for the instance's, the real agent process behind the tunnel."""

from __future__ import annotations

from pathlib import Path

import pytest

from scipioncloud import tunnel
from scipioncloud.commands.usage import describe_usage
from tests.cli.test_agent_remote import sshd  # noqa: F401 - the fixture: a real sshd on 127.0.0.1
from tests.conftest import agent_config_dict, start_agent, stop_agent

pytestmark = pytest.mark.integration


@pytest.fixture
def priced_agent(tmp_path):
    config = agent_config_dict(
        tmp_path, usage={"price_per_hour": 1.212, "interval_s": 0.2}, idle={"action": "poweroff"}
    )
    process = start_agent(tmp_path, config)
    yield process
    stop_agent(process)


def test_usage_and_keep_running_through_the_tunnel(cli, our_ami, key_pair, sshd, priced_agent, monkeypatch):  # noqa: F811
    from tests.cli.conftest import launch

    launch(cli, "--name", "cryo-usage")
    monkeypatch.setattr(tunnel, "AGENT_PORT", int(priced_agent.url.rsplit(":", 1)[1]))
    monkeypatch.setattr(tunnel, "TOKEN_FILE", str(Path(priced_agent.config_path).parent / "agent.token"))
    ssh = ["--ssh-host", "127.0.0.1", "--ssh-port", str(sshd.port), "--user", "root",
           "--key", str(sshd.key_file), "--ssh-option", sshd.options[1]]  # fmt: skip
    report = cli.json("usage", "cryo-usage", "--days", "3", *ssh)
    assert report["price"] == {
        "instance_per_hour": 1.212,
        "volumes_per_hour": report["price"]["volumes_per_hour"],
        "source": "agent.toml usage.price_per_hour",
    }
    text = cli("usage", "cryo-usage", *ssh)
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("price: $1.21/h instance")
    assert "saved by 0 idle stop(s): $0.00" in text.stdout
    assert priced_agent.token not in text.output

    state = cli.json("keep-running", "cryo-usage", "--minutes", "90", *ssh)
    assert state["postponed_until"] is not None
    assert state["decision"]["decision"] == "stay"
    assert priced_agent.get("/v1/idle").json()["postponed_until"] == state["postponed_until"]


def test_describe_usage_names_every_part():
    report = {
        "price": {"instance_per_hour": 1.006, "volumes_per_hour": 0.0548, "source": "price table"},
        "days": [
            {
                "date": "2026-11-30",
                "wall_s": 7200.0,
                "cost_usd": 2.12,
                "other_cost_usd": 0.1,
                "other_s": 340.0,
                "idle_cost_usd": 0.5,
                "idle_s": 1700.0,
                "projects": [
                    {
                        "project": "apoferritin",
                        "cost_usd": 1.52,
                        "protocols": [
                            {"protocol": "12 motioncor", "cost_usd": 1.52, "wall_s": 5160.0, "gpu_s": 4000.0,
                             "cpu_s": 900.0}
                        ],
                    }
                ],
            }
        ],
        "saved_by_stops": {"stops": 2, "saved_usd": 12.07, "would_have_cost_usd": 14.19, "cost_usd": 2.12},
    }  # fmt: skip
    lines = describe_usage(report)
    assert lines == [
        "price: $1.01/h instance + $0.0548/h volumes (price table)",
        "2026-11-30: $2.12 over 2.00 h",
        "  apoferritin: $1.52",
        "    12 motioncor: $1.52 (wall 1.43 h, GPU 1.11 h, CPU 15.0 min)",
        "  other work: $0.1000 (5.7 min)",
        "  idle, nobody used it: $0.5000 (28.3 min)",
        "saved by 2 idle stop(s): $12.07 (would have cost $14.19, cost $2.12)",
    ]
