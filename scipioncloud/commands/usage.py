"""`scipioncloud usage INSTANCE` (what the instance cost, and on what) and `scipioncloud keep-running
INSTANCE` (postpone its idle stop), both through the agent's SSH tunnel as `scipioncloud status`."""

from __future__ import annotations

from typing import Any

import click

from scipioncloud import agent_client, tunnel
from scipioncloud.commands.common import command
from scipioncloud.commands.instances import _ssh_target, ssh_options


def _money(value: Any) -> str:
    if value is None:
        return "unknown"
    return f"${value:,.2f}" if value >= 0.995 or value == 0 else f"${value:.4f}"  # cents of a short run


def _hours(seconds: Any) -> str:
    seconds = seconds or 0
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def describe_usage(report: dict[str, Any]) -> list[str]:
    """Short human lines: per day, each project's protocols, then other work, idle, and the savings."""
    price = report.get("price", {})
    lines = [
        f"price: {_money(price.get('instance_per_hour'))}/h instance + "
        f"{_money(price.get('volumes_per_hour'))}/h volumes ({price.get('source', '?')})"
    ]
    for day in report.get("days", []):
        lines.append(f"{day['date']}: {_money(day.get('cost_usd'))} over {_hours(day.get('wall_s'))}")
        for project in day.get("projects", []):
            lines.append(f"  {project['project']}: {_money(project.get('cost_usd'))}")
            for protocol in project.get("protocols", []):
                lines.append(
                    f"    {protocol['protocol']}: {_money(protocol.get('cost_usd'))} "
                    f"(wall {_hours(protocol.get('wall_s'))}, GPU {_hours(protocol.get('gpu_s'))}, "
                    f"CPU {_hours(protocol.get('cpu_s'))})"
                )
        lines.append(f"  other work: {_money(day.get('other_cost_usd'))} ({_hours(day.get('other_s'))})")
        lines.append(
            f"  idle, nobody used it: {_money(day.get('idle_cost_usd'))} ({_hours(day.get('idle_s'))})"
        )
    saved = report.get("saved_by_stops", {})
    lines.append(
        f"saved by {saved.get('stops', 0)} idle stop(s): {_money(saved.get('saved_usd'))} "
        f"(would have cost {_money(saved.get('would_have_cost_usd'))}, cost {_money(saved.get('cost_usd'))})"
    )
    return lines


@command(None, "usage")
@click.argument("instance")
@click.option("--days", type=click.IntRange(1, 400), default=7, show_default=True, help="Last N UTC days.")
@ssh_options
def usage(run, instance, days, key, user, ssh_host, ssh_port, ssh_opts):
    """What INSTANCE cost per day, project and Scipion protocol, and what idle stops saved."""
    target = _ssh_target(run, instance, key, user, ssh_host, ssh_port, ssh_opts)
    token = tunnel.read_token(target)
    with tunnel.open_tunnel(target) as url:
        report = agent_client.AgentClient(url, token).get(f"/v1/usage?days={days}")
    run.out.emit(report, text="\n".join(describe_usage(report)))


@command(None, "keep-running")
@click.argument("instance")
@click.option("--minutes", type=click.FloatRange(1, 24 * 60), help="Default: the agent's idle.postpone_min.")
@ssh_options
def keep_running(run, instance, minutes, key, user, ssh_host, ssh_port, ssh_opts):
    """Postpone INSTANCE's idle stop (the warning's "Keep running")."""
    target = _ssh_target(run, instance, key, user, ssh_host, ssh_port, ssh_opts)
    token = tunnel.read_token(target)
    body = {} if minutes is None else {"minutes": minutes}
    with tunnel.open_tunnel(target) as url:
        state = agent_client.AgentClient(url, token).post("/v1/idle/postpone", body)
    run.out.emit(state, text=f"idle action postponed until {state.get('postponed_until')}")


COMMANDS = [usage, keep_running]
