"""The two packages keep to their own extras: every module of `agent` imports with the operator's
dependencies made unimportable, and every module of `scipioncloud` with the agent's server stack made
unimportable (a fresh interpreter each, so nothing is already loaded). The wheel's metadata says the same."""

from __future__ import annotations

import ast
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


# Known crossing, to be moved (issue 12): the data capability imports the operator's S3 helpers
# (scipioncloud.transfer, s3checksums, s3costs). Any other agent module importing the operator fails here.
KNOWN_CROSSINGS = {"agent.data", "agent.data.archive", "agent.data.follow"}


def test_the_agent_needs_nothing_of_the_operator():
    names = modules(agent)
    assert "agent.cli" in names and "agent.app" in names
    failed = import_blocking(OPERATOR_ONLY, names)
    assert set(failed) <= KNOWN_CROSSINGS, failed


def operator_imports(path) -> list[str]:
    """Every `scipioncloud` import in a module's source, at the top or inside a function (a lazy import
    escapes the import check above until the code path runs)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [n for n in names if n.split(".")[0] == "scipioncloud"]
    return found


def test_no_agent_module_imports_the_operator_even_lazily():
    root = Path(agent.__file__).parent
    crossing = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        if module not in KNOWN_CROSSINGS and operator_imports(path):
            crossing[module] = operator_imports(path)
    assert crossing == {}, crossing


def test_the_lazy_import_check_sees_a_lazy_import(tmp_path):
    """The scan above could not fail if it missed imports inside functions."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from scipioncloud import costs\n    import scipioncloud.s3costs\n")
    assert operator_imports(module) == ["scipioncloud", "scipioncloud.s3costs"]


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
