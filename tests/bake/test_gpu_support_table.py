"""The driver role's support table (data the role's check reads) and its README agree, and every family's
branch range is usable: the README is the operators' view of the same facts."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import moto
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


# Upstream facts, each with its source: tests/bake/data/gpu_upstream_facts.yml (and docs/fidelity.md).
FACTS = yaml.safe_load((Path(__file__).parent / "data/gpu_upstream_facts.yml").read_text())
OPEN = FACTS["open_gpu_kernel_modules"]


def ec2_gpus() -> dict[str, set[tuple[str, int]]]:
    """{family: {(GPU name, memory MiB), ...}} from EC2's DescribeInstanceTypes as moto ships it."""
    dump = Path(moto.__file__).parent / "ec2/resources/instance_types.json.gz"
    families: dict[str, set[tuple[str, int]]] = {}
    for name, described in json.loads(gzip.decompress(dump.read_bytes())).items():
        for gpu in described.get("GpuInfo", {}).get("Gpus", []):
            families.setdefault(name.split(".")[0], set()).add((gpu["Name"], gpu["MemoryInfo"]["SizeInMiB"]))
    return families


def open_module_listing(table_gpu: str) -> dict | None:
    """The open modules' README entry for a table GPU name ("Tesla V100 32GB" -> None: not listed)."""
    bare = table_gpu.removeprefix("Tesla ").removesuffix(" (fractional)")
    if any(bare.split()[0] == name for name in OPEN["not_listed"]):
        return None
    assert bare in OPEN["gpus"], f"{table_gpu}: no upstream fact yet, add it to gpu_upstream_facts.yml"
    return OPEN["gpus"][bare]


def branch(release: str) -> int:
    return int(release.split(".")[0])


def test_each_family_carries_the_gpu_ec2_reports():
    ec2 = ec2_gpus()
    for family, gpu in TABLE.items():
        if family in FACTS["aws_previous_generation"]:
            assert family not in ec2, f"{family} is in EC2's data again: check its row against it"
            continue
        assert family in ec2, f"{family}: no such GPU instance family in EC2's DescribeInstanceTypes"
        for name, memory_mib in ec2[family]:
            assert name in gpu["gpu"].split() or name == gpu["gpu"], (family, name, gpu["gpu"])
            size = re.search(r"(\d+)GB", gpu["gpu"])
            if size:  # the variant: A100 40GB (p4d) vs 80GB (p4de), V100 32GB (p3dn)
                assert round(memory_mib / 1024) == int(size.group(1)), (family, memory_mib)


def test_open_modules_choice_follows_nvidias_compatible_gpus_list():
    for family, gpu in TABLE.items():
        listed = open_module_listing(gpu["gpu"])
        if listed is None:  # pre-Turing: the open modules cannot drive it
            assert gpu["open_modules"] == "unsupported", family
            assert gpu["architecture"] in FACTS["proprietary_only"], family
            continue
        assert gpu["open_modules"] in ("recommended", "required"), family
        assert gpu["architecture"] not in FACTS["proprietary_only"], family
        assert (gpu["open_modules"] == "required") == (gpu["architecture"] in FACTS["open_modules_required"])
        first = branch(listed["first_listed"])
        assert first <= DEFAULT_BRANCH, f"{family}: the default branch's open modules do not list it"
        if gpu.get("driver") == "grid":  # AWS's GRID guest driver sets its own floor (g6f)
            assert gpu["min_branch"] >= first, family
        elif listed.get("newer_than_open_modules"):
            assert gpu["min_branch"] == first, f"{family}: NVIDIA lists {listed['product']} from R{first}"
        else:
            assert gpu["min_branch"] <= first, family
    assert FACTS["open_modules_default_from_branch"] <= DEFAULT_BRANCH  # open is the branch's own default
