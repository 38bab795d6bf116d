"""The pinned Scipion set (roles/scipion/defaults/main.yml) against PyPI, with pip's real resolver, for the
interpreter the role installs (scipion_python_version, from the role's own Miniforge) and for the system
Pythons of the Ubuntu releases, which the role deliberately does not use: 24.04's 3.12 cannot resolve the
pins, 26.04's 3.13 has no wheels for pyworkflow's exact pins. When Scipion moves its pins, these tests say
so. The interpreters are pyenv's builds of those versions on this machine; pip's cache keeps reruns fast."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.conda_standin import pyenv_python

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((REPO / "roles/scipion/defaults/main.yml").read_text())
# What the image installs: the core, every default plugin, and the ChimeraX plugin a facility may add.
PINS = {
    **DEFAULTS["scipion_core_packages"],
    **{p["name"]: p["version"] for p in DEFAULTS["scipion_plugins"]},
    DEFAULTS["scipion_chimera_plugin"]["name"]: DEFAULTS["scipion_chimera_plugin"]["version"],
}
UBUNTU_SYSTEM_PYTHON = {"22.04": "3.10", "24.04": "3.12", "26.04": "3.13"}


def resolve(python_spec: str, tmp_path: Path, *pip_args: str) -> tuple[subprocess.CompletedProcess, dict]:
    python = pyenv_python(python_spec) / "bin" / "python3"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in PINS.items()))
    report = tmp_path / "report.json"
    argv = [str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--report", str(report), "-r", str(requirements), *pip_args]  # fmt: skip
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, check=False)
    return result, json.loads(report.read_text()) if report.exists() and result.returncode == 0 else {}


def test_the_role_interpreter_resolves_every_pin(tmp_path):
    result, report = resolve(DEFAULTS["scipion_python_version"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
    for name, version in PINS.items():
        assert chosen.get(name) == version, name
    # what made 3.12 impossible: scipion-em-xmipp's scipy<=1.10.0, met by a cp310 wheel here
    scipy = [i for i in report["install"] if i["metadata"]["name"].lower() == "scipy"]
    assert scipy and scipy[0]["download_info"]["url"].endswith(".whl")
    assert tuple(int(x) for x in scipy[0]["metadata"]["version"].split(".")[:2]) <= (1, 10)


def test_ubuntu_2404_system_python_cannot_resolve_the_pins(tmp_path):
    result, _ = resolve(UBUNTU_SYSTEM_PYTHON["24.04"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ResolutionImpossible" in output
    # pip's own explanation: scipion-em pins scipy==1.11.2 on 3.12, scipion-em-xmipp needs scipy<=1.10.0
    assert f"scipion-em {PINS['scipion-em']} depends on scipy==" in output, output[-3000:]
    assert f"scipion-em-xmipp {PINS['scipion-em-xmipp']} depends on scipy<=" in output


def test_ubuntu_2604_system_python_has_no_wheels_for_pyworkflows_pins(tmp_path):
    """Blocked by Scipion's own pins (pyworkflow 3.11.7: numpy==1.26.1, matplotlib==3.8.1, pillow==10.1.0),
    which have no cp313 wheels; from source, Pillow 10.1.0's build fails on 3.13. When this test fails, the
    pins moved: 26.04 can then be supported."""
    result, _ = resolve(UBUNTU_SYSTEM_PYTHON["26.04"], tmp_path, "--only-binary", "numpy,matplotlib,pillow")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "No matching distribution found for" in output
    assert any(f"for {name}==" in output for name in ("numpy", "matplotlib", "pillow")), output[-2000:]
