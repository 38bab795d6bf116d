"""The driver role's support table (data the role's check reads) and its README agree, and every family's
branch range is usable: the README is the operators' view of the same facts."""

from __future__ import annotations

from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles/nvidia_driver"
TABLE = yaml.safe_load((ROLE / "vars/gpu_support.yml").read_text())["nvidia_driver_gpu_support"]
README = (ROLE / "README.md").read_text()
DEFAULT_BRANCH = int(yaml.safe_load((ROLE / "defaults/main.yml").read_text())["nvidia_driver_branch"])


def readme_row(family: str) -> str:
    rows = [line for line in README.splitlines() if line.startswith("| ") and family in line.split("|")[1]]
    assert rows, f"{family} missing from the README table"
    return rows[0]


def test_every_family_in_the_table_is_documented_with_its_gpu_and_branches():
    for family, gpu in TABLE.items():
        row = readme_row(family)
        assert gpu["architecture"] in row, row
        assert f"R{gpu['min_branch']}" in row, row
        if gpu["max_branch"] is not None:
            assert f"R{gpu['max_branch']}" in row, row
        else:
            assert "newer" in row, row


def test_open_modules_and_fabric_manager_are_documented_and_consistent():
    for family, gpu in TABLE.items():
        row = readme_row(family)
        assert gpu["open_modules"] in ("unsupported", "recommended", "required"), family
        expected = {
            "unsupported": "proprietary only",
            "recommended": "open recommended",
            "required": "open required",
        }
        assert expected[gpu["open_modules"]] in row, row
        assert ("required (NVSwitch)" in row) == bool(gpu.get("fabricmanager")), row
        # no GSP before Turing: open modules cannot run there; Blackwell runs nothing else
        if gpu["architecture"] in ("Kepler", "Maxwell", "Pascal", "Volta"):
            assert gpu["open_modules"] == "unsupported", family
        if gpu["architecture"] == "Blackwell":
            assert gpu["open_modules"] == "required", family
    assert {"p5e", "p5en", "p6-b200", "g6e", "g6f", "gr6"} <= set(TABLE)


def test_branch_ranges_are_consistent_and_the_default_branch_drives_g3_to_p5():
    for family, gpu in TABLE.items():
        assert gpu["max_branch"] is None or gpu["min_branch"] <= gpu["max_branch"], family
    driven = {f for f, g in TABLE.items() if g["max_branch"] is None or g["max_branch"] >= DEFAULT_BRANCH}
    assert driven == set(TABLE) - {"p2"}
