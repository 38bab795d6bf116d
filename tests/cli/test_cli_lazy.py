"""The CLI imports a command's module only when that command runs (click's lazy subcommands), and the
table that says where each command lives agrees with the modules themselves."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import boto3

from scipioncloud import cli, commands
from scipioncloud.aws import known_regions


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
