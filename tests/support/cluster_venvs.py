"""The two Python environments the cluster tests use besides .venv, each pinned where the product pins it:
- .venv-scipion: Scipion's pyworkflow at the scipion role's pinned version, plus our check plugin
  (roles/scipion/files/scipioncloud-check) installed from this tree. pyworkflow pins numpy, pillow, requests
  and psutil exactly, so it cannot share .venv.
- .venv-pcluster: aws-parallelcluster at scipioncloud.cluster.parallelcluster.PCLUSTER_VERSION (its own pins
  on flask, packaging and boto3 conflict with .venv's).
`make setup` makes both (python -m tests.support.cluster_venvs); tests call the same functions, which only
install what is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from scipioncloud.cluster.parallelcluster import PCLUSTER_VERSION

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "roles/scipion/files/scipioncloud-check"


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                   check=True, timeout=1200)  # fmt: skip


def _venv(path: Path, *requirements: str) -> Path:
    python = path / "bin/python"
    stamp = path / ".installed"
    wanted = "\n".join(requirements)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    if not stamp.exists() or stamp.read_text() != wanted:
        _pip(python, *requirements)
        stamp.write_text(wanted)
    return python


def pyworkflow_version() -> str:
    defaults = yaml.safe_load((REPO / "roles/scipion/defaults/main.yml").read_text())
    return defaults["scipion_core_packages"]["scipion-pyworkflow"]


def scipion_python(path: Path = REPO / ".venv-scipion") -> Path:
    """Scipion's Python with the check plugin from this tree (reinstalled each call: it is small)."""
    python = _venv(path, f"scipion-pyworkflow=={pyworkflow_version()}", "wheel", "setuptools>=62.6")
    with tempfile.TemporaryDirectory() as tmp:  # build outside the tree: no build/ or egg-info left there
        source = Path(tmp) / "scipioncloud-check"
        shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        _pip(python, "--no-deps", "--no-build-isolation", "--force-reinstall", str(source))
    return python


def pcluster_bin(path: Path = REPO / ".venv-pcluster") -> Path:
    _venv(path, f"aws-parallelcluster=={PCLUSTER_VERSION}")
    return path / "bin/pcluster"


if __name__ == "__main__":
    print(scipion_python())
    print(pcluster_bin())
