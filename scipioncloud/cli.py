"""`scipioncloud`: the operator's command line. Each command group lives in its own module."""

from __future__ import annotations

import click

from scipioncloud import __version__


@click.group()
@click.version_option(__version__)
def main() -> None:
    """Bake ScipionCloud images and run cryo-EM workstations on AWS."""


from scipioncloud.bake import bake_command  # noqa: E402

main.add_command(bake_command)
