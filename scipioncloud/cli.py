"""`scipioncloud`: the operator's command line. Each command module lists its commands in COMMANDS; this
file only puts them on the group, importing a module only when one of its commands runs (click's lazily
loaded subcommands): `data pull` need not pay for the bake's or the cluster's imports at every start."""

from __future__ import annotations

import importlib

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


if __name__ == "__main__":  # python -m scipioncloud.cli (tests run it as a process)
    main()
