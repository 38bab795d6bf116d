"""`make lint`'s infrastructure checks (tools/lint-infra) pass on the repository and catch what they must."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_lint_infra_passes():
    done = subprocess.run(
        [str(REPO / "tools/lint-infra")], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "scipion-desktop: packer validate and ansible syntax check passed" in done.stdout
    assert "lint-infra: all checks passed" in done.stdout


def test_packer_fmt_check_catches_unformatted_templates(tmp_path):
    shutil.copy(REPO / "packer/scipioncloud.pkr.hcl", tmp_path / "t.pkr.hcl")
    text = (
        (tmp_path / "t.pkr.hcl").read_text().replace("  region        = var.region", "  region = var.region")
    )
    (tmp_path / "t.pkr.hcl").write_text(text)
    done = subprocess.run(["packer", "fmt", "-check", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 3 and "t.pkr.hcl" in done.stdout


def test_ansible_lint_profile_catches_a_short_module_name(tmp_path):
    role = tmp_path / "roles/bad/tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(
        "---\n- name: Install a package\n  apt:\n    name: fio\n    state: present\n"
    )
    shutil.copy(REPO / ".ansible-lint", tmp_path / ".ansible-lint")
    done = subprocess.run(
        ["ansible-lint", "roles"], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300
    )
    assert done.returncode != 0
    assert "fqcn" in done.stdout + done.stderr


def test_make_test_lints_before_it_tests():
    """CI runs `make test`: the lint the README promises runs first, and a lint failure stops the tests."""
    plan = subprocess.run(
        ["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    steps = [i for i, line in enumerate(plan) if "ruff check" in line or "lint-infra" in line]
    pytest_step = next(i for i, line in enumerate(plan) if "bin/pytest" in line)
    assert len(steps) == 2 and max(steps) < pytest_step, plan
