"""The image's version record read from the package managers' own files, checked against the package
managers themselves on this machine (dpkg-query, pip) and through the agent's command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from agent import version_info
from agent.cli import main
from tests.support.paths import VENV_BIN


def test_debian_packages_are_what_dpkg_query_says():
    listed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    expected = {}
    for line in listed:
        status, name, version = line.split("\t")
        if status.startswith("ii"):
            expected.setdefault(name, version)
    assert version_info.dpkg_packages(Path("/")) == expected


def test_python_distributions_are_what_pip_lists():
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    expected = {
        d["name"].lower().replace("_", "-").replace(".", "-"): d["version"] for d in json.loads(listed)
    }
    found = version_info.python_distributions(VENV_BIN.parent)
    assert {k: v for k, v in found.items() if k in expected} == expected


def test_command_writes_the_record_and_refuses_a_missing_component(tmp_path):
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: nvidia-driver-580-server\nStatus: install ok installed\nArchitecture: amd64\n"
        "Version: 580.95.05-0ubuntu0.22.04.1\n\n"
        "Package: cuda-toolkit-12-6\nStatus: install ok installed\nVersion: 12.6.3-1\n\n"
        "Package: turbovnc\nStatus: deinstall ok config-files\nVersion: 3.1.2\n"
    )
    out = tmp_path / "version-info.json"
    runner = CliRunner()
    done = runner.invoke(main, ["version-info", "--root", str(root), "--out", str(out), "--expect", "cuda"])
    assert done.exit_code == 0, done.output
    info = json.loads(out.read_text())
    assert info["components"]["nvidia_driver"]["version"] == "580.95.05-0ubuntu0.22.04.1"
    assert info["components"]["cuda"] == {"12.6": "12.6.3-1"}
    assert "turbovnc" not in info["components"]  # removed, only its config files left
    assert "nvidia-driver: 580.95.05-0ubuntu0.22.04.1" in done.output
    # NVIDIA's own repository names the driver cuda-drivers-<branch>
    (root / "var/lib/dpkg/status").write_text(
        "Package: cuda-drivers-580\nStatus: install ok installed\nVersion: 580.95.05-1\n\n"
        "Package: nvidia-driver\nStatus: install ok installed\nVersion: 580.95.05-1\n"
    )
    driver = json.loads(runner.invoke(main, ["version-info", "--root", str(root)]).output)["components"]
    assert driver["nvidia_driver"] == {"package": "cuda-drivers-580", "version": "580.95.05-1"}
    missing = runner.invoke(main, ["version-info", "--root", str(root), "--expect", "turbovnc"])
    assert missing.exit_code != 0 and "not installed: turbovnc" in missing.output
