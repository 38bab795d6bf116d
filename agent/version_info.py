"""What actually went into an image, read from the files the package managers keep (as amazon-eks-ami's
generate-version-info.sh records `rpm -qa` and the binaries' own versions into version-info.json).

Only reads files under `root` (dpkg's status database, the Python environments' *.dist-info), so the same
code reports on the running machine (root "/") and on a root filesystem seen from outside. The bake runs it
on the build instance before sysprep (`scipioncloud-agent version-info`), downloads the JSON, and the
operator's CLI tags the AMIs and writes it into the bake record."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

DPKG_STATUS = "var/lib/dpkg/status"
# Python environments whose distributions are recorded: Scipion's (roles/scipion, venv mode) and the agent's.
PYTHON_ENVS = ("opt/scipion/.scipion3", "opt/scipioncloud/venv")
# Components by name -> how to find them among the installed Debian packages.
# The driver: NVIDIA's repository installs cuda-drivers-<branch>, Ubuntu's nvidia-driver-<branch>[-server].
DRIVER_PACKAGE = re.compile(
    r"^(?:cuda-drivers-(\d+)|nvidia-(?:driver|headless)(?:-no-dkms)?-(\d+)(?:-server(?:-open)?|-open)?)$"
)
CUDA_PACKAGE = re.compile(r"^cuda-toolkit-(\d+)-(\d+)$")
DEB_COMPONENTS = {"turbovnc": "turbovnc", "virtualgl": "virtualgl"}
SCIPION_CORE = ("scipion-pyworkflow", "scipion-em", "scipion-app")


class VersionInfoError(RuntimeError):
    """A component the image must hold is not installed; the message names it."""


def dpkg_packages(root: Path) -> dict[str, str]:
    """Installed Debian packages {name: version} from dpkg's status file (what `dpkg-query -W` prints)."""
    path = root / DPKG_STATUS
    packages: dict[str, str] = {}
    for stanza in path.read_text(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"(?m)^([A-Za-z-]+): ?(.*)$", stanza))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields and "Version" in fields:
            # Multi-Arch: a package may appear once per architecture; the first (native) one is kept.
            packages.setdefault(fields["Package"], fields["Version"])
    return packages


def python_distributions(env: Path) -> dict[str, str]:
    """{distribution name (normalised): version} of the Python environment at `env` (a venv folder)."""
    found: dict[str, str] = {}
    for site in sorted(env.glob("lib/python3*/site-packages")):
        for dist in importlib.metadata.distributions(path=[str(site)]):
            name = dist.metadata["Name"]
            if name:
                found[re.sub(r"[-_.]+", "-", name).lower()] = dist.version
    return found


def collect(root: Path = Path("/"), python_envs: tuple[str, ...] = PYTHON_ENVS) -> dict[str, Any]:
    packages = dpkg_packages(root)
    envs = {f"/{env}": python_distributions(root / env) for env in python_envs if (root / env).is_dir()}
    components: dict[str, Any] = {}
    drivers = {m.group(0): packages[m.group(0)] for m in map(DRIVER_PACKAGE.match, packages) if m}
    if drivers:
        name = sorted(drivers)[-1]
        components["nvidia_driver"] = {"package": name, "version": drivers[name]}
    cuda = {f"{m[1]}.{m[2]}": packages[m.group(0)] for m in map(CUDA_PACKAGE.match, packages) if m}
    if cuda:
        components["cuda"] = dict(sorted(cuda.items()))
    for component, package in DEB_COMPONENTS.items():
        if package in packages:
            components[component] = packages[package]
    scipion = envs.get(f"/{PYTHON_ENVS[0]}", {})
    if "scipion-pyworkflow" in scipion:
        components["scipion"] = {name: scipion[name] for name in SCIPION_CORE if name in scipion}
        components["scipion_plugins"] = {
            name: version
            for name, version in sorted(scipion.items())
            if name.startswith("scipion-em-") and name not in SCIPION_CORE
        }
    agent = envs.get(f"/{PYTHON_ENVS[1]}", {})
    if "scipioncloud" in agent:
        components["scipioncloud_agent"] = agent["scipioncloud"]
    return {"components": components, "packages": packages, "python": envs}


def check_expected(info: dict[str, Any], expected: list[str]) -> None:
    missing = [name for name in expected if name not in info["components"]]
    if missing:
        known = ", ".join(info["components"]) or "none"
        raise VersionInfoError(f"not installed: {', '.join(missing)} (found: {known})")


def flat(info: dict[str, Any]) -> dict[str, str]:
    """One line per component, for tags and tables: {"nvidia-driver": "580.95.05-0ubuntu1", ...}."""
    out: dict[str, str] = {}
    for name, value in info["components"].items():
        key = name.replace("_", "-")
        if name == "nvidia_driver":
            out[key] = value["version"]
        elif name in ("cuda", "scipion", "scipion_plugins"):
            out[key] = " ".join(f"{k.removeprefix('scipion-em-')}={v}" for k, v in value.items())
        else:
            out[key] = str(value)
    return out
