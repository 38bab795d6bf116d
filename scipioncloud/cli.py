"""`scipioncloud`: the operator's command line. Each command group lives in its own module."""

from __future__ import annotations

import importlib

import click

from scipioncloud import __version__
from scipioncloud.bake import bake_command
from scipioncloud.commands import instances, provision
from scipioncloud.commands.cost import cost
from scipioncloud.commands.images import images
from scipioncloud.commands.volumes import volumes


@click.group()
@click.version_option(__version__)
def main() -> None:
    """Bake ScipionCloud images and run cryo-EM workstations on AWS."""


main.add_command(images)
main.add_command(volumes)
main.add_command(cost)
instances.register(main)
provision.register(main)
main.add_command(bake_command)
main.add_command(importlib.import_module("scipioncloud.commands.data").data)  # data: issue 14
if __name__ == "__main__":  # python -m scipioncloud.cli (tests run it as a process)
    main()
