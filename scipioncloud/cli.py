"""`scipioncloud`: the operator's command line. Each command module lists its commands in COMMANDS; this
file only puts them on the group."""

from __future__ import annotations

import click

from scipioncloud import __version__
from scipioncloud.commands import bake, cluster, cost, data, images, instances, provision, usage, volumes


@click.group()
@click.version_option(__version__)
def main() -> None:
    """Bake ScipionCloud images and run cryo-EM workstations on AWS."""


for module in (images, volumes, cost, instances, provision, bake, usage, cluster, data):
    for cmd in module.COMMANDS:
        main.add_command(cmd)


if __name__ == "__main__":  # python -m scipioncloud.cli (tests run it as a process)
    main()
