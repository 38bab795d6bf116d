"""`make ami` on an operator machine without Packer (tools/install-packer), and the Packer plugin pins
(packer/plugins/plugins.pkr.hcl) that `scipioncloud bake` enforces through a plugin folder of its own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scipioncloud import bake

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools/install-packer"


def run_tool(tmp_path: Path, os_release: str, **env) -> subprocess.CompletedProcess:
    release = tmp_path / "os-release"
    release.write_text(os_release)
    run_env = {
        **os.environ,
        "OS_RELEASE": str(release),
        "SCIPIONCLOUD_PACKER": "packer-not-installed-here",
        "SCIPIONCLOUD_PACKER_INSTALL": "print",
        **env,
    }
    return subprocess.run([str(TOOL)], capture_output=True, text=True, env=run_env, check=False, timeout=30)


@pytest.mark.parametrize(
    ("os_release", "codename"),
    [
        ('NAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\nUBUNTU_CODENAME=noble\n', "noble"),
        ('NAME="Debian GNU/Linux"\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n', "trixie"),
        ('NAME="Linux Mint"\nVERSION_CODENAME=xia\nUBUNTU_CODENAME=noble\n', "noble"),  # derivative
    ],
)
def test_without_packer_it_stops_with_hashicorps_commands_for_the_release(tmp_path, os_release, codename):
    done = run_tool(tmp_path, os_release)
    assert done.returncode == 1  # make ami stops here
    lines = [line.strip() for line in done.stderr.splitlines()]
    assert "wget -O - https://apt.releases.hashicorp.com/gpg | gpg --dearmor -o " \
           "/usr/share/keyrings/hashicorp-archive-keyring.gpg" in lines  # fmt: skip
    repo_line = next(line for line in lines if "apt.releases.hashicorp.com " in line)
    expected = (
        rf"signed-by=\S+hashicorp-archive-keyring.gpg\] https://apt.releases.hashicorp.com {codename} main"
    )
    assert re.search(expected, repo_line), repo_line
    assert "apt-get install -y packer" in lines
    assert "apt-get install -y packer" not in done.stdout  # nothing was run


def test_with_packer_on_path_it_does_nothing(tmp_path):
    done = run_tool(tmp_path, "VERSION_CODENAME=noble\n", SCIPIONCLOUD_PACKER="sh")
    assert done.returncode == 0 and done.stdout == done.stderr == ""


def test_no_codename_is_a_clear_error(tmp_path):
    done = run_tool(tmp_path, 'NAME="Something"\n')
    assert done.returncode == 1 and "no release codename" in done.stderr


def test_make_ami_uses_the_tool_not_the_distributions_packer():
    makefile = (REPO / "Makefile").read_text()
    ami = makefile[makefile.index("\nami:") :].split("\n\n")[0]
    assert "tools/install-packer" in ami and "apt-bake" not in ami


def test_plugin_pins_are_exact_and_current():
    """Exact pins (Packer would otherwise load whatever highest version is installed), at least the releases
    listed on releases.hashicorp.com when this was written (amazon 1.8.0, ansible 1.1.4)."""
    text = (REPO / "packer/plugins/plugins.pkr.hcl").read_text()
    pins = dict(
        re.findall(r'source\s*=\s*"github.com/hashicorp/(\w+)"\s*\n\s*version\s*=\s*"= ([\d.]+)"', text)
    )
    assert set(pins) == {"amazon", "ansible"}, text
    as_tuple = lambda v: tuple(map(int, v.split(".")))  # noqa: E731
    assert as_tuple(pins["amazon"]) >= (1, 8, 0) and as_tuple(pins["ansible"]) >= (1, 1, 4)


def test_each_pin_set_gets_its_own_plugin_folder(tmp_path):
    repo = tmp_path / "repo"
    (repo / "packer/plugins").mkdir(parents=True)
    pins = repo / "packer/plugins/plugins.pkr.hcl"
    pins.write_text('packer { required_plugins { amazon = { version = "= 1.8.0" } } }\n')
    first = bake.plugin_dir(repo, tmp_path / "build")
    assert first == bake.plugin_dir(repo, tmp_path / "build")
    pins.write_text('packer { required_plugins { amazon = { version = "= 1.3.3" } } }\n')
    assert bake.plugin_dir(repo, tmp_path / "build") != first  # an old install is never picked up
    assert first.parent == tmp_path / "build/packer-plugins"


def test_make_ami_without_credentials_stops_first_and_installs_nothing(tmp_path):
    """The credential check comes before Packer's installation: an operator without an AWS account is sent
    to `make rehearse` at once, and nothing is installed. PATH holds no packer, and every program
    tools/install-packer would run to install one only records that it was called (we run as root, so the
    tool would really install)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "installer-calls"
    bin_dir.mkdir()
    for tool in ("make", "bash", "sh", "env", "sed", "tr", "id", "dpkg", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for installer in ("apt-get", "wget", "curl", "gpg"):
        (bin_dir / installer).write_text(f'#!/bin/sh\necho "{installer} $*" >> {calls}\nexit 1\n')
        (bin_dir / installer).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("SCIPIONCLOUD_PACKER_INSTALL", None)
    env.update(
        PATH=str(bin_dir),
        HOME=str(tmp_path),  # no ~/.aws
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",  # botocore's chain would otherwise ask IMDS
    )
    argv = ["make", "--no-print-directory", "-o", ".venv/.installed", "ami"]  # the venv is this test's
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode != 0
    assert "no AWS credentials found" in done.stderr and "make rehearse" in done.stderr, done.stderr
    assert not calls.exists(), calls.read_text()
    assert "install-packer" not in done.stdout + done.stderr
