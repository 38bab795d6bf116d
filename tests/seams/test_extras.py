"""The two packages keep to their own extras: every module of `agent` imports with the operator's
dependencies made unimportable, and every module of `scipioncloud` with the agent's server stack made
unimportable (a fresh interpreter each, so nothing is already loaded). The wheel's metadata says the same."""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import agent
import scipioncloud
from tests.support.paths import REPO

OPERATOR_ONLY = ["ansible_runner", "packerpy", "yaml", "scipioncloud"]
AGENT_ONLY = ["flask", "waitress", "werkzeug", "psutil", "pynvml", "prometheus_client"]

BLOCKING_IMPORT = """
import importlib, importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is another extra's", name=name)
sys.meta_path.insert(0, Block())
failed = {}
for module in json.loads(sys.argv[2]):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        failed[module] = str(exc)
print(json.dumps(failed))
"""


def modules(package) -> list[str]:
    return [package.__name__] + [
        m.name
        for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if "__main__" not in m.name
    ]


def import_blocking(blocked: list[str], names: list[str]) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKING_IMPORT, json.dumps(blocked), json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=True,
    )
    return json.loads(result.stdout)


# Import-time crossings of the agent into the operator: none.
KNOWN_CROSSINGS: set[str] = set()
# A lazy import (inside a function) escapes the check above, so the source is read too. None is left: the
# usage report reads the price table through agent/prices.py.
LAZY_CROSSINGS: set[str] = set()


def operator_imports(package) -> dict[str, list[str]]:
    """{module: [scipioncloud modules it imports anywhere, also inside functions]}."""
    found: dict[str, list[str]] = {}
    for name in modules(package):
        spec = importlib.util.find_spec(name)
        tree = ast.parse(Path(spec.origin).read_text())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            hits = [t for t in targets if t.split(".")[0] == "scipioncloud"]
            if hits:
                found.setdefault(name, []).extend(hits)
    return found


def test_no_agent_module_imports_the_operator_even_lazily():
    found = operator_imports(agent)
    assert set(found) <= LAZY_CROSSINGS, found


def test_the_lazy_import_scan_sees_a_lazy_import(tmp_path, monkeypatch):
    """The scan above could not fail if it missed imports inside functions."""
    package = tmp_path / "lazy_probe"
    package.mkdir()
    (package / "__init__.py").write_text("def f():\n    from scipioncloud import costs\n")
    (package / "m.py").write_text("def g():\n    import scipioncloud.costs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import lazy_probe

    found = operator_imports(lazy_probe)
    assert found == {"lazy_probe": ["scipioncloud"], "lazy_probe.m": ["scipioncloud.costs"]}


def test_the_agent_needs_nothing_of_the_operator():
    names = modules(agent)
    assert "agent.cli" in names and "agent.app" in names
    assert {"agent.s3.transfer", "agent.data.archive", "agent.data.follow"} <= set(names)
    failed = import_blocking(OPERATOR_ONLY, names)
    assert set(failed) <= KNOWN_CROSSINGS, failed


def test_the_s3_library_needs_neither_side():
    """agent.s3 is shared: the operator's CLI imports it, so it must not pull in the agent's server stack
    (Flask, prometheus) nor the operator's package."""
    names = [n for n in modules(agent) if n.startswith("agent.s3")]
    assert "agent.s3.transfer" in names and "agent.s3.costs" in names
    assert import_blocking(OPERATOR_ONLY + AGENT_ONLY, names) == {}


def test_the_operator_cli_needs_nothing_of_the_agent_server():
    names = modules(scipioncloud)
    assert "scipioncloud.cli" in names
    assert import_blocking(AGENT_ONLY, names) == {}


def test_the_blocker_does_block():
    """The check above could not fail if the blocker let everything through."""
    assert "agent.app" in import_blocking(["flask"], ["agent.app"])


@pytest.fixture(scope="module")
def metadata(agent_wheel) -> str:
    with zipfile.ZipFile(agent_wheel) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return wheel.read(name).decode()


def test_wheel_extras_split_the_dependencies(metadata):
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]

    def extra(name):
        return {
            r.split(";")[0].split(">")[0].split("<")[0].strip().lower()
            for r in requires
            if f'extra == "{name}"' in r
        }

    base = {r.split(";")[0].split(">")[0].strip().lower() for r in requires if "extra ==" not in r}
    assert {"ansible-runner", "packer.py"} <= extra("cli")
    assert {"flask", "waitress", "nvidia-ml-py"} <= extra("agent")
    assert not extra("agent") & {"ansible-runner", "packer.py", "pyyaml"}
    assert not extra("cli") & {"flask", "waitress", "psutil", "nvidia-ml-py", "prometheus-client"}
    assert not base & (extra("agent") | extra("cli"))  # a plain install pulls neither side


def test_the_wheel_ships_the_one_price_table(agent_wheel):
    """The agent prices its hours from the table the operator's estimates use: it travels in the wheel
    beside its reader, in the agent's package (an instance installs only the agent's extra)."""
    with zipfile.ZipFile(agent_wheel) as wheel:
        names = set(wheel.namelist())
        assert {"agent/prices.json", "agent/prices.py"} <= names
        assert json.loads(wheel.read("agent/prices.json"))["regions"]
