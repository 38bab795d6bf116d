"""`scipioncloud`: the operator's command line. Each command module lists its commands in COMMANDS; this
file only puts them on the group, importing a module only when one of its commands runs (click's lazily
loaded subcommands): `data pull` need not pay for the bake's or the cluster's imports at every start."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys

import click

from scipioncloud import __version__

# command name -> module under scipioncloud.commands that defines it (tests/cli/test_cli_lazy.py checks
# this table against every module's COMMANDS)
COMMAND_MODULES = {
    "images": "images",
    "volumes": "volumes",
    "snapshots": "volumes",
    "cost": "cost",
    "launch": "instances",
    "instances": "instances",
    "stop": "instances",
    "start": "instances",
    "resize": "instances",
    "terminate": "instances",
    "desktop": "instances",
    "status": "instances",
    "access": "instances",
    "provision": "provision",
    "bake": "bake",
    "usage": "usage",
    "keep-running": "usage",
    "cluster": "cluster",
    "data": "data",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        commands = importlib.import_module(f"scipioncloud.commands.{module}").COMMANDS
        return next(c for c in commands if c.name == cmd_name)


@click.group(cls=LazyGroup)
@click.version_option(__version__)
def main() -> None:
    """Bake ScipionCloud images and run cryo-EM workstations on AWS."""


_status = [1]  # what Python exits with after an exception nothing caught


def run() -> None:
    """`scipioncloud` as a program (the console script; `python -m scipioncloud.cli`): the command, then an
    exit without the interpreter's teardown. Freeing botocore's models and every module took 0.05 s at the
    end of each command, a data pull's 3 % on the bench (bench/bench_data.py). Everything a normal exit does
    first still happens: `finally` blocks, the join of non-daemon threads, the atexit handlers the command
    registered (they run before this one, registered first) and a flush of stdout and stderr."""
    atexit.register(_leave)
    try:
        main()  # click ends every run with SystemExit
    except SystemExit as done:
        code = done.code
        _status[0] = code if isinstance(code, int) else (0 if code is None else 1)
        raise


def _leave() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can reach it
            stream.flush()
    os._exit(_status[0])


if __name__ == "__main__":  # python -m scipioncloud.cli (tests run it as a process)
    run()
