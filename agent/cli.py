"""`scipioncloud-agent`: serve the API, or do one job (pre-warm, mount) without the server."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from agent import __version__
from agent.config import ConfigError, load
from agent.token import TokenError


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """The ScipionCloud on-instance agent."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def load_or_exit(path: Path | None):
    try:
        return load(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Agent TOML config file.")
def serve(config_path: Path | None) -> None:
    """Serve the HTTP API (bind address and token file from the config)."""
    from agent.server import serve as run

    try:
        run(load_or_exit(config_path))
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
