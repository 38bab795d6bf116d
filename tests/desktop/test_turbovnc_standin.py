"""The TurboVNC stand-in's Xvnc (tests/support/turbovnc_standin/Xvnc, shipped as /opt/TurboVNC/bin/Xvnc by the
test vendor repository) checks its command line as TurboVNC's Xvnc does before it runs TigerVNC: what
TurboVNC would refuse is refused, so a role option TurboVNC lacks cannot pass here."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import aptrepo
from tests.support.desktop import ROLE, role_vars


@pytest.fixture(scope="module")
def xvnc(tmp_path_factory):
    package = aptrepo.turbovnc_packages()[0]
    path = tmp_path_factory.mktemp("turbovnc") / "Xvnc"
    path.write_text(package.files["/opt/TurboVNC/bin/Xvnc"])
    path.chmod(0o755)
    return path


def run(xvnc, *args):
    return subprocess.run([str(xvnc), *args], capture_output=True, text=True, timeout=10)


def test_version_is_turbovncs_banner(xvnc):
    out = run(xvnc, "-version")
    assert out.returncode == 0
    assert out.stderr.strip() == "TurboVNC Server (Xvnc) 64-bit v3.3 (build 20260206)"  # init.c PrintVersion


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([":1", "-SecurityTypes=VncAuth"], "Unrecognized option: -SecurityTypes=VncAuth"),  # TigerVNC's form
        ([":1", "-localhost=1"], "Unrecognized option: -localhost=1"),
        ([":1", "-UseBlacklist=0"], "Unrecognized option"),
        ([":1", "-maxauthfails", "-1"], "-maxauthfails takes a count"),
        ([":1", "-securitytypes", "tlsvnc"], "does not mirror"),
        ([":1", "-geometry", "0x768"], "Invalid geometry"),
        ([":1", "-depth", "12"], "Depth 12 not supported"),
        ([":1", "-rfbport"], "needs an argument"),
        ([":1", "-deferupdate", "5"], "TurboVNC option this TigerVNC stand-in does not mirror"),
    ],
)
def test_refuses_what_turbovnc_refuses(xvnc, args, message):
    out = run(xvnc, *args)
    assert out.returncode == 1 and message in out.stderr, out.stderr


def test_the_session_scripts_command_line_passes(xvnc):
    """The role's options and the session script's own, as it passes them: each is checked in order before
    `-version` ends the run (as TurboVNC's ddxProcessArgument does), so a refused one fails here."""
    options = role_vars()["desktop_xvnc_args"]["turbovnc"].split()
    script = (ROLE / "files/scipioncloud-desktop-session").read_text()
    assert '-geometry "${DESKTOP_GEOMETRY:-1920x1080}" -depth 24 -nolisten tcp -s 0' in script
    fixed = ["-auth", "/x", "-rfbauth", "/p", "-rfbport", "5901", "-geometry", "1920x1080", "-depth", "24"]
    out = run(xvnc, ":1", *fixed, "-nolisten", "tcp", "-s", "0", *options, "-version")
    assert out.returncode == 0 and "TurboVNC Server" in out.stderr, out.stderr
