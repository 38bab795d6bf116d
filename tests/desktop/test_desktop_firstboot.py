"""The role's first-boot script for real (openssl, tigervncpasswd), with EC2's metadata service replaced
by the IMDSv2 stand-in (tests/support/fake_imdsv2.py), and the role's units checked by systemd-analyze."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import jinja2
import pytest

from agent import imds as imds_client
from agent.token import ensure_token
from tests.support.desktop import ROLE, DesktopStack, render
from tests.support.fake_imdsv2 import FakeImdsV2Server, answering_after
from tests.support.paths import VENV_BIN, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def imds():
    meta = {"public-hostname": "ec2-3-4-5-6.compute.amazonaws.com", "public-ipv4": "3.4.5.6"}
    with FakeImdsV2Server(meta=meta) as server:
        yield server


def secret_paths(variables: dict) -> list[str]:
    """desktop_secret_paths with each "{{ ... }}" resolved against the stack's variables."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)  # noqa: S701 - paths, not HTML
    return [env.from_string(path).render(**variables) for path in variables["desktop_secret_paths"]]


def cert_names(path) -> set[str]:
    text = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
    ).stdout
    return set(re.findall(r"(?:DNS|IP Address):([^,\s]+)", text))


def test_first_boot_uses_the_instance_names_and_renews_when_they_change(tmp_path, imds):
    stack = DesktopStack(tmp_path)
    stack.vars["desktop_imds_url"] = imds.url
    stack.vars["desktop_https_port"] = 443
    result = stack.firstboot()
    console = (tmp_path / "console").read_text()
    line = console.strip().splitlines()[-1]
    assert (
        line
        == f"SCIPIONCLOUD-DESKTOP url=https://ec2-3-4-5-6.compute.amazonaws.com/ password={stack.password}"
    )
    assert stack.password not in result.stdout + result.stderr
    crt = tmp_path / "tls" / "desktop.crt"
    assert {"ec2-3-4-5-6.compute.amazonaws.com", "3.4.5.6", "127.0.0.1"} <= cert_names(crt)
    assert stat.S_IMODE((tmp_path / "tls" / "desktop.key").stat().st_mode) == 0o600
    include = (tmp_path / "agent-auth.conf").read_text()
    assert (
        include
        == f'proxy_set_header Authorization "Bearer {(tmp_path / "agent.token").read_text().strip()}";\n'
    )

    first_password, first_key = stack.password, (tmp_path / "tls" / "desktop.key").read_bytes()
    stack.firstboot()  # a reboot with the same names changes nothing
    assert (tmp_path / "tls" / "desktop.key").read_bytes() == first_key

    imds.meta.update({"public-hostname": "ec2-7-7-7-7.compute.amazonaws.com", "public-ipv4": "7.7.7.7"})
    stack.firstboot()  # stopped and started: new public IP, same password, new certificate
    assert stack.password == first_password
    assert {"ec2-7-7-7-7.compute.amazonaws.com", "7.7.7.7"} <= cert_names(crt)
    assert "3.4.5.6" not in cert_names(crt)
    assert "url=https://ec2-7-7-7-7.compute.amazonaws.com/" in (tmp_path / "console").read_text()


def test_first_boot_settings_render_as_json(tmp_path):
    stack = DesktopStack(tmp_path)
    data = json.loads(render("desktop-firstboot.json.j2", stack.vars, tmp_path / "fb.json").read_text())
    assert data["vncpasswd"] == "/usr/bin/tigervncpasswd" and data["https_port"] == stack.https_port


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path):
    import getpass

    libexec = tmp_path / "libexec"
    libexec.mkdir()
    (libexec / "desktop-session").symlink_to(ROLE / "files" / "scipioncloud-desktop-session")
    stack = DesktopStack(tmp_path)
    stack.vars.update(desktop_libexec_dir=str(libexec), desktop_user=getpass.getuser())
    units = [
        render(f"{name}.service.j2", stack.vars, tmp_path / f"{name}.service")
        for name in ("scipioncloud-desktop", "scipioncloud-websockify", "scipioncloud-desktop-firstboot")
    ]
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines() if "scipioncloud" in line]
    assert result.returncode == 0 and not problems, result.stderr
    desktop = units[0].read_text()
    assert "Restart=always" in desktop and "StartLimitIntervalSec=0" in desktop


def test_every_file_first_boot_makes_is_in_the_per_instance_list(tmp_path):
    """What the script writes per instance is exactly what the role lists for sysprep (desktop.list)."""
    stack = DesktopStack(tmp_path)
    render("desktop-firstboot.json.j2", stack.vars, tmp_path / "desktop-firstboot.json")
    render("scipioncloud-desktop-firstboot.service.j2", stack.vars, tmp_path / "firstboot.service")
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    stack.firstboot()
    made = {str(p) for p in tmp_path.rglob("*") if p.is_file()} - {str(p) for p in before}
    made.discard(str(tmp_path / "console"))  # the serial console: a device on an instance, not a file
    made.discard(str(tmp_path / "agent.token"))  # the agent's (roles/agent lists it), not the desktop's
    listed = set(secret_paths(stack.vars))
    assert made, "first boot made nothing"
    assert made <= listed, f"made per instance but not in desktop_secret_paths: {sorted(made - listed)}"


def test_first_boot_without_the_agent_token_says_so(tmp_path):
    """The token is the agent's to make: without it the script stops loudly instead of making another."""
    stack = DesktopStack(tmp_path)
    config = render("desktop-firstboot.json.j2", stack.vars, tmp_path / "desktop-firstboot.json")
    result = subprocess.run(
        [str(VENV_BIN / "scipioncloud-agent"), "desktop-firstboot", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "no agent token" in result.stderr and "scipioncloud-agent token" in result.stderr
    assert not (tmp_path / "agent.token").exists() and not (tmp_path / "agent-auth.conf").exists()


def run_firstboot_on_ec2(stack, imds_url: str) -> subprocess.CompletedProcess:
    """The unit's command as on EC2 (the detection forced), with a short wait for the metadata service."""
    ensure_token(Path(stack.vars["desktop_agent_token_file"]))  # the agent's hook ran before
    stack.vars.update(desktop_imds_url=imds_url, desktop_imds_wait_s=4)
    config = render("desktop-firstboot.json.j2", stack.vars, stack.root / "desktop-firstboot.json")
    return subprocess.run(
        [str(VENV_BIN / "scipioncloud-agent"), "desktop-firstboot", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, imds_client.ON_EC2_ENV: "1"},
    )


def test_on_ec2_first_boot_waits_for_a_late_metadata_service(tmp_path):
    """The network comes up 2 s late: the names still reach the certificate (never a silent fallback)."""
    stack = DesktopStack(tmp_path)
    server = FakeImdsV2Server(meta={"public-hostname": "ec2-5-5-5-5.compute.amazonaws.com"})
    with answering_after(server, 2):
        ran = run_firstboot_on_ec2(stack, server.url)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "ec2-5-5-5-5.compute.amazonaws.com" in cert_names(tmp_path / "tls" / "desktop.crt")


def test_on_ec2_first_boot_without_a_metadata_service_fails_loudly(tmp_path):
    stack = DesktopStack(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    failed = run_firstboot_on_ec2(stack, url)
    assert failed.returncode != 0
    assert f"the instance metadata service at {url} did not answer within 4 s" in failed.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "tls" / "desktop.crt").exists()
