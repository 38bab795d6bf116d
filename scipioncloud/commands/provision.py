"""`scipioncloud provision HOST...`"""

from __future__ import annotations

from pathlib import Path

import click

from scipioncloud import provision as lib
from scipioncloud.commands.common import command
from scipioncloud.errors import OperationFailed


@command(None, "provision", aws=False)
@click.argument("hosts", nargs=-1, required=True)
@click.option("--image", default="scipion-desktop", show_default=True, help="Image definition to apply.")
@click.option("--user", default="ubuntu", show_default=True, help="SSH user (needs sudo).")
@click.option("--key", "key_file", type=click.Path(path_type=Path, dir_okay=False), help="SSH private key.")
@click.option("--playbook", type=click.Path(path_type=Path), default=lib.DEFAULT_PLAYBOOK, show_default=True)
@click.option(
    "--vars-file",
    "vars_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra Ansible variables file (repeatable).",
)
@click.option(
    "--connection", default="ssh", show_default=True, help="Ansible connection (local: this machine)."
)
def provision(run, hosts, image, user, key_file, playbook, vars_files, connection):
    """Apply the ScipionCloud roles to existing Ubuntu machines with ansible-runner.

    HOSTS are names or addresses, each optionally with :PORT for SSH (ws1.lab.org:2222, [fe80::1]:22)."""
    out = run.out

    def on_task(task: str, play: str) -> None:
        out.info(f"TASK {task}")

    def on_result(host: str, task: str, outcome: str) -> None:
        if outcome in ("changed", "failed", "unreachable"):
            out.info(f"  {host}: {outcome}")

    result = lib.run(
        list(hosts),
        playbook=playbook,
        image=image,
        user=user,
        key_file=key_file,
        connection=connection,
        vars_files=tuple(vars_files),
        on_task=on_task,
        on_result=on_result,
    )
    if not result.ok:
        detail = (
            "; ".join(
                f"{f.host}: task '{f.task}' {'unreachable' if f.unreachable else 'failed'}: {f.message}"
                for f in result.failures
            )
            or f"ansible-runner ended {result.status} (rc {result.rc})"
        )
        if not out.as_json:
            _summary(out, result)
        raise OperationFailed(detail, **result.as_dict())  # under --json: this one document, with the rows
    _summary(out, result)


def _summary(out, result) -> None:
    rows = [{"host": h, **c} for h, c in result.hosts.items()]
    out.table(
        rows,
        [
            ("host", "host"),
            ("ok", "ok"),
            ("changed", "changed"),
            ("failures", "failed"),
            ("dark", "unreachable"),
            ("skipped", "skipped"),
        ],
        title="provision summary",
        data=result.as_dict(),
    )


COMMANDS = [provision]
