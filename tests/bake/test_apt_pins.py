"""Every apt pin and `name=version` the roles write, checked against the stand-in repositories' packages,
whose names and version shapes are the vendors' own (tests/support/aptrepo.py, sources in docs/fidelity.md):
TurboVNC/VirtualGL `VERSION-BUILD`, Ubuntu's `580.x-0ubuntu0.24.04.1`, NVIDIA's `580.x-1`, and Ubuntu's
kernel-ABI-shaped `linux-modules-nvidia-*` (`6.8.0-1036.38`). A pin that matches no real-shaped version is
a bake that fails (or a pin that silently does nothing) on real AWS. apt and Ansible's apt module match
version globs with fnmatch; versions are ordered with the real `dpkg --compare-versions`."""

from __future__ import annotations

import fnmatch
import functools
import re
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.support import aptrepo

REPO = Path(__file__).resolve().parents[2]
DESKTOP = REPO / "roles/desktop"
DRIVER = REPO / "roles/nvidia_driver"
JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - apt files
PACKAGES = aptrepo.nvidia_packages() + aptrepo.turbovnc_packages() + aptrepo.virtualgl_packages()


def dpkg_lt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0


def newest(versions: list[str]) -> str:
    return max(
        versions, key=functools.cmp_to_key(lambda a, b: -1 if dpkg_lt(a, b) else (1 if dpkg_lt(b, a) else 0))
    )


def versions_of(name: str) -> list[str]:
    return [p.version for p in PACKAGES if p.name == name]


def parse_preferences(text: str) -> list[tuple[list[str], str]]:
    """(Package globs, Pin version glob) of each stanza of an apt preferences file."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields = dict(
            line.split(":", 1)
            for line in block.splitlines()
            if ":" in line and not line.lstrip().startswith("#")
        )
        if "Package" in fields and fields.get("Pin", "").strip().startswith("version "):
            stanzas.append(
                (fields["Package"].split(), fields["Pin"].strip().removeprefix("version ").strip())
            )
    return stanzas


def desktop_pin(component: str) -> tuple[list[tuple[list[str], str]], str]:
    """The desktop role's preferences file and apt `name=version` for turbovnc/virtualgl, rendered with the
    role's defaults."""
    defaults = yaml.safe_load((DESKTOP / "defaults/main.yml").read_text())
    tasks = yaml.safe_load((DESKTOP / f"tasks/{component}.yml").read_text())
    env = JINJA
    content = next(t["ansible.builtin.copy"]["content"] for t in tasks if "ansible.builtin.copy" in t)
    spec = next(t["ansible.builtin.apt"]["name"] for t in tasks if "ansible.builtin.apt" in t)
    render = lambda text: env.from_string(text).render(**defaults)  # noqa: E731
    return parse_preferences(render(content)), render(spec)


@pytest.mark.parametrize(("component", "releases"), [("turbovnc", aptrepo.TURBOVNC_RELEASES),
                                                      ("virtualgl", aptrepo.VIRTUALGL_RELEASES)])  # fmt: skip
def test_desktop_pins_select_the_wanted_upstream_release(component, releases):
    stanzas, spec = desktop_pin(component)
    available = versions_of(component)
    assert len(available) >= 2, "the stand-in must offer more than the pinned release"
    (packages, pattern), *_ = stanzas
    assert packages == [component]
    matched = [v for v in available if fnmatch.fnmatchcase(v, pattern)]
    assert matched, f"Pin: version {pattern} matches none of the upstream-shaped versions {available}"
    name, _, wanted = spec.partition("=")
    assert name == component and [v for v in available if fnmatch.fnmatchcase(v, wanted)] == matched
    # the pin picks the release named in the role's defaults, as VERSION-BUILD
    version = yaml.safe_load((DESKTOP / "defaults/main.yml").read_text())[f"desktop_{component}_version"]
    build = dict(releases)[version]
    assert newest(matched) == f"{version}-{build}"


@pytest.mark.parametrize("version", ["", "580.95.05"])
def test_driver_pin_matches_every_package_of_the_branch_it_covers(version):
    """Every stand-in package whose name carries branch 580 and that a stanza covers must have a version the
    stanza's pin matches: a kernel-shaped linux-modules-nvidia-580-* under a "580.*" pin never installs."""
    template = JINJA.from_string((DRIVER / "templates/apt-preferences.j2").read_text())
    text = template.render(ansible_managed="test", nvidia_driver_branch="580", nvidia_driver_version=version)
    stanzas = parse_preferences(text)
    assert stanzas
    covered = 0
    for globs, pattern in stanzas:
        for package in {p.name for p in PACKAGES if any(fnmatch.fnmatchcase(p.name, g) for g in globs)}:
            if "580" not in package and not any(v.startswith("580.") for v in versions_of(package)):
                continue  # another branch's package: the pin is there to keep it out
            covered += 1
            matching = [v for v in versions_of(package) if fnmatch.fnmatchcase(v, pattern)]
            assert matching, f"{package} {versions_of(package)} never matches Pin: version {pattern}"
    assert covered > 10


def test_precompiled_modules_carry_kernel_abi_versions():
    """The stand-in keeps Ubuntu's shape: meta package versioned like the kernel ABI, depending on the
    per-kernel package of the same version (packages.ubuntu.com, source linux-restricted-modules-aws)."""
    meta = next(p for p in PACKAGES if p.name == "linux-modules-nvidia-580-server-open-aws")
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+\.\d+", meta.version), meta.version
    assert dpkg_lt(meta.version, "580.0") and dpkg_lt("6.0", meta.version)
    assert any(d.startswith("linux-modules-nvidia-580-server-open-6.8.0-") for d in meta.depends)


def test_every_stand_in_version_is_a_valid_debian_version():
    for package in PACKAGES:
        done = subprocess.run(
            ["dpkg", "--compare-versions", package.version, "eq", package.version], check=False
        )
        assert done.returncode == 0, (package.name, package.version)
