"""The CLI imports a command's module only when that command runs (click's lazy subcommands), and the
table that says where each command lives agrees with the modules themselves."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from scipioncloud import cli, commands
from scipioncloud.aws import known_regions

REPO = Path(__file__).resolve().parents[2]


def test_the_lazy_table_names_every_command_where_it_is_defined():
    defined = {}
    for info in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"scipioncloud.commands.{info.name}")
        for cmd in getattr(module, "COMMANDS", []):
            defined[cmd.name] = info.name
    assert defined == cli.COMMAND_MODULES


def test_one_command_does_not_import_the_others():
    probe = (
        "import sys\n"
        "from scipioncloud.cli import main\n"
        "try:\n"
        "    main(['data', 'pull', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "import json\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('scipioncloud.commands.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "scipioncloud.commands.data" in loaded
    assert not {"scipioncloud.commands.bake", "scipioncloud.commands.cluster"} & set(loaded)


def test_known_regions_read_from_the_endpoint_table_are_boto3s_ec2_regions():
    session = boto3.Session(region_name="eu-west-1")
    expected = set()
    for partition in session.get_available_partitions():
        expected.update(session.get_available_regions("ec2", partition_name=partition))
    assert known_regions(session) == expected
    assert {"eu-west-1", "us-east-1", "cn-north-1", "us-gov-west-1"} <= expected


def test_json_output_never_loads_rich():
    # rich is a tenth of the start-up a `data pull --json` pays on every run; only a terminal needs it.
    probe = (
        "import sys\n"
        "from scipioncloud.output import Output\n"
        "out = Output(as_json=True)\n"
        "out.info('narration')\n"
        "with out.progress('snapshot') as report:\n"
        "    report(50)\n"
        "out.emit({'ok': True})\n"
        "print('rich' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["{", '  "ok": true', "}", "False"]


@pytest.mark.parametrize(
    "ending, status",
    [("raise SystemExit(3)", 3), ("raise SystemExit(None)", 0), ("raise RuntimeError('a bug')", 1)],
)
def test_the_program_leaves_with_its_status_after_its_exit_handlers_and_all_its_output(
    tmp_path, ending, status
):
    # `run` skips the interpreter's teardown (os._exit): what a normal exit does before it must still happen.
    mark = tmp_path / "atexit-ran"
    script = (
        "import atexit, sys\n"
        "from scipioncloud import cli\n"
        "def main():\n"
        f"    atexit.register(lambda: open({str(mark)!r}, 'w').write('ran'))\n"
        "    sys.stdout.write('x' * 300_000)\n"  # more than a pipe holds: flushed at the exit
        f"    {ending}\n"
        "cli.main = main\n"
        "cli.run()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == status, result.stderr
    assert result.stdout == "x" * 300_000
    assert mark.read_text() == "ran"
    if status == 1:
        assert "RuntimeError: a bug" in result.stderr
