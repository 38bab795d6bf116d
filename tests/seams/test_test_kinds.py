"""Folders are areas, markers are kinds: every collected test has exactly one kind (unit, integration,
rehearsal, gpu); tests/conftest.py marks `unit` on tests that declare no other."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import REPO


def kinds_of_every_test() -> dict[str, list[str]]:
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    out = subprocess.run(
        [*command, "-p", "tests.support.kind_report", "tests"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    found = {}
    for line in out.splitlines():
        if line.startswith("KINDS "):
            nodeid, kinds = line.removeprefix("KINDS ").rsplit(" ", 1)  # parametrized ids may hold spaces
            found[nodeid] = [] if kinds == "-" else kinds.split(",")
    return found


def test_every_test_has_exactly_one_kind():
    found = kinds_of_every_test()
    assert len(found) > 500, len(found)
    wrong = {nodeid: kinds for nodeid, kinds in found.items() if len(kinds) != 1}
    assert not wrong, sorted(wrong.items())[:10]
    this = f"tests/seams/test_test_kinds.py::{test_every_test_has_exactly_one_kind.__name__}"
    assert found[this] == ["unit"]
    assert found["tests/bake/test_bake_rehearsal.py::test_bake_succeeds_and_names_the_amis"] == ["rehearsal"]
