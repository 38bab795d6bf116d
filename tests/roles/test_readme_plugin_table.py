"""The README's plugin table says what the image really contains: one row per plugin of the scipion role's
defaults, with the pinned version and each binary target it installs (xmipp3, not xmipp), and ChimeraX
named as not in the image by default, at the chimera plugin's pinned version."""

from __future__ import annotations

import re

import yaml

from tests.support.paths import REPO

DEFAULTS = yaml.safe_load((REPO / "roles/scipion/defaults/main.yml").read_text())


def readme_plugin_rows() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Scipion and its plugins in the images", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| scipion-em-"):
            rows[cells[0]] = cells[1:]
    return rows


def test_every_plugin_of_the_image_has_its_row_at_its_pinned_version():
    rows = readme_plugin_rows()
    plugins = {p["name"]: p for p in DEFAULTS["scipion_plugins"]}
    assert set(rows) == set(plugins), "README plugin table and roles/scipion/defaults disagree"
    for name, plugin in plugins.items():
        version, binary = rows[name][0], rows[name][1]
        assert version == plugin["version"], (name, version, plugin["version"])
        for target in plugin["binaries"]:  # each program the role installs is named in its row
            assert target.lower() in binary.lower(), (name, target, binary)


def test_chimerax_is_named_as_not_in_the_image_by_default():
    text = (REPO / "README.md").read_text()
    chimera = DEFAULTS["scipion_chimera_plugin"]
    assert chimera["name"] not in readme_plugin_rows()
    match = re.search(r"Not in the image by default: \*\*(\S+) (\S+) and UCSF ChimeraX (\S+)\.\*\*", text)
    assert match, "README no longer says ChimeraX is left out by default"
    assert match.groups() == (
        chimera["name"],
        chimera["version"],
        DEFAULTS["scipion_chimerax_flatpak_release"],
    )
