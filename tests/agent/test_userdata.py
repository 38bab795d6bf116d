"""The launch user data on the instance: `scipioncloud-agent userdata` applies it to agent.toml, fetched from
IMDSv2 (the local stand-in) or from a file."""

from __future__ import annotations

from click.testing import CliRunner

from agent import userdata
from agent.cli import main
from agent.config import load as load_agent_config
from tests.conftest import free_port
from tests.support.fake_imdsv2 import FakeImdsV2Server


def test_apply_ignores_foreign_user_data_and_keeps_the_file(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text("[idle]\ncpu_pct = 20\n")
    assert userdata.apply("#cloud-config\npackages: [htop]\n", config) is False
    assert config.read_text() == "[idle]\ncpu_pct = 20\n"


def test_apply_creates_the_file_and_keeps_its_mode(tmp_path):
    config = tmp_path / "etc" / "agent.toml"
    text = userdata.render({"idle": {"action": "poweroff", "window_min": 45}})
    assert userdata.apply(text, config)
    assert load_agent_config(config).idle.window_min == 45
    config.chmod(0o640)
    assert userdata.apply(userdata.render({"desktop": {"vnc": "tigervnc"}}), config)
    assert config.stat().st_mode & 0o777 == 0o640
    loaded = load_agent_config(config)
    assert loaded.desktop.vnc == "tigervnc" and loaded.idle.action == "poweroff"


def test_apply_command_line(tmp_path):
    data = tmp_path / "user-data"
    data.write_text(userdata.render({"idle": {"action": "poweroff"}}))
    config = tmp_path / "agent.toml"
    done = CliRunner().invoke(main, ["userdata", "--file", str(data), "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert load_agent_config(config).idle.action == "poweroff"
    data.write_text(userdata.MARKER + "\n[idle\n")
    refused = CliRunner().invoke(main, ["userdata", "--file", str(data), "--config", str(config)])
    assert refused.exit_code != 0
    assert "not valid TOML" in refused.output


def test_command_fetches_the_user_data_from_the_configured_imds(tmp_path):
    config = tmp_path / "agent.toml"
    user_data = userdata.render({"idle": {"action": "poweroff", "window_min": 60}}).encode()
    with FakeImdsV2Server(user_data=user_data) as imds:
        config.write_text(f'[host]\nimds_url = "{imds.url}"\n')
        done = CliRunner().invoke(main, ["userdata", "--config", str(config)])
        assert done.exit_code == 0, done.output
        assert ("GET", "/latest/user-data", 200) in imds.requests  # with the session token (IMDSv2)
    loaded = load_agent_config(config)
    assert loaded.idle.action == "poweroff" and loaded.idle.window_min == 60
    assert loaded.host.imds_url == imds.url  # the file's own keys stay


def test_command_off_ec2_changes_nothing(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'[host]\nimds_url = "http://127.0.0.1:{free_port()}"\n')
    before = config.read_text()
    done = CliRunner().invoke(main, ["userdata", "--config", str(config)])
    assert done.exit_code == 0 and "no instance metadata service" in done.output
    assert config.read_text() == before
    with FakeImdsV2Server(user_data=None) as imds:  # launched without user data: IMDS answers 404
        done = CliRunner().invoke(main, ["userdata", "--config", str(config), "--imds-url", imds.url])
    assert done.exit_code == 0 and "no user data" in done.output
    assert config.read_text() == before
