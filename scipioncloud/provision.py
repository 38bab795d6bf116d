"""Apply the site playbook to existing machines with ansible-runner: progress per task, a per-host
summary, and failures that name the host, the task and Ansible's message."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from scipioncloud.errors import BadInput

# The roles and image definitions ship inside the package (scipioncloud/ansible links to roles/ and
# images/), so `scipioncloud provision` works from any folder.
DEFAULT_PLAYBOOK = Path(__file__).resolve().parent / "ansible" / "roles" / "site.yml"
HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")  # a DNS name or an address; nothing a shell or YAML would bend


@dataclass
class Failure:
    host: str
    task: str
    message: str
    unreachable: bool = False


@dataclass
class ProvisionResult:
    status: str
    rc: int
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rc": self.rc,
            "ok": self.ok,
            "hosts": self.hosts,
            "failures": [vars(f) for f in self.failures],
        }


def split_host(host: str) -> tuple[str, int | None]:
    """'ws1:2222' or '[fe80::1]:2222' -> (address, port); a bare name or address has no port."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", host) or re.fullmatch(
        r"([A-Za-z0-9._-]+):(\d+)", host
    )
    if not match:
        return host, None
    port = int(match.group(2))
    if not 0 < port < 65536:
        raise BadInput(f"host {host!r}: port {port} is out of range")
    return match.group(1), port


def inventory_name(host: str) -> str:
    """The name a host gets in the inventory: Ansible reads NAME:PORT in an inventory key as a host and its
    port, so a colon there would make one machine two (our name and Ansible's)."""
    return host.replace("[", "").replace("]", "").replace(":", "_")


def build_inventory(
    hosts: list[str], user: str, key_file: Path | None, connection: str = "ssh"
) -> dict[str, Any]:
    if not hosts:
        raise BadInput("name at least one host")
    if len({inventory_name(h) for h in hosts}) != len(hosts):
        raise BadInput("a host is named twice")
    entries = {}
    for host in hosts:
        if not HOST_RE.match(host.replace("[", "").replace("]", "")):
            raise BadInput(f"host {host!r} is not a host name or address (optionally with :PORT)")
        address, port = split_host(host)
        entry: dict[str, Any] = {
            "ansible_host": address,  # alias and address kept apart (a path-like name breaks the fact cache)
            "ansible_user": user,
            "ansible_connection": connection,
            "ansible_python_interpreter": "/usr/bin/python3" if connection != "local" else sys.executable,
        }
        if port is not None:
            entry["ansible_port"] = port
        if key_file:
            entry["ansible_ssh_private_key_file"] = str(key_file)
        entries[inventory_name(host)] = entry
    return {"all": {"hosts": entries}}


def image_vars(playbook: Path, image: str) -> list[Path]:
    """The image's Ansible vars file, images/IMAGE.yml beside the playbook's folder (as the bake passes
    it to Packer); [] when the playbook has no images/ folder (e.g. a playbook of your own)."""
    folder = playbook.parent.parent / "images"
    if not folder.is_dir():
        return []
    path = folder / f"{image}.yml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yml"))) or "none"
        raise BadInput(f"unknown image {image!r}: no {path} (known: {known})")
    return [path]


def _message(result: dict[str, Any]) -> str:
    for key in ("msg", "stderr", "reason"):
        value = result.get(key)
        if value:
            return " ".join(str(value).split())[:500]
    return "failed without a message"


def run(
    hosts: list[str],
    *,
    playbook: Path = DEFAULT_PLAYBOOK,
    image: str = "scipion-desktop",
    user: str = "ubuntu",
    key_file: Path | None = None,
    connection: str = "ssh",
    extravars: dict[str, Any] | None = None,
    vars_files: tuple[Path, ...] = (),
    on_task: Callable[[str, str], None] | None = None,
    on_result: Callable[[str, str, str], None] | None = None,
) -> ProvisionResult:
    """Run `playbook` on `hosts`. on_task(task) fires as a task starts, on_result(host, task, outcome) as a
    host finishes it (outcome: ok, changed, failed, unreachable, skipped)."""
    playbook = Path(playbook).resolve()
    if not playbook.is_file():
        raise BadInput(f"playbook {playbook} does not exist; pass --playbook FILE")
    if key_file is not None and not Path(key_file).is_file():
        raise BadInput(f"key file {key_file} does not exist")
    vars_files = (*image_vars(playbook, image), *vars_files)
    variables = {"scipioncloud_image": image, **(extravars or {})}
    cmdline = " ".join(f"-e @{Path(f).resolve()}" for f in vars_files)
    for f in vars_files:
        if not Path(f).is_file():
            raise BadInput(f"vars file {f} does not exist")
    names = {inventory_name(h): h for h in hosts}
    failures: list[Failure] = []
    hosts_summary: dict[str, dict[str, int]] = {}

    def handle(event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        task = data.get("task", "")
        host = data.get("host", "")
        if kind == "playbook_on_task_start" and on_task:
            on_task(task, data.get("play", ""))
        elif kind.startswith("runner_on_") and host:
            host = names.get(host, host)
            res = data.get("res", {}) or {}
            if kind == "runner_on_failed" and not data.get("ignore_errors"):
                outcome = "failed"
                failures.append(Failure(host, task, _message(res)))
            elif kind == "runner_on_unreachable":
                outcome = "unreachable"
                failures.append(Failure(host, task, _message(res), unreachable=True))
            elif kind == "runner_on_skipped":
                outcome = "skipped"
            elif kind == "runner_on_ok":
                outcome = "changed" if res.get("changed") else "ok"
            else:
                return True
            if on_result:
                on_result(host, task, outcome)
        elif kind == "playbook_on_stats":
            for counter in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
                for name, count in (data.get(counter) or {}).items():
                    hosts_summary.setdefault(name, {})[counter] = count
        return True

    bin_dir = str(Path(sys.executable).parent)  # ansible-playbook installed beside us (the venv)
    with tempfile.TemporaryDirectory(prefix="scipioncloud-provision-") as private:
        runner = ansible_runner.run(
            private_data_dir=private,
            playbook=str(playbook),
            inventory=build_inventory(hosts, user, key_file, connection),
            extravars=variables,
            cmdline=cmdline or None,
            event_handler=handle,
            quiet=True,
            envvars={
                "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                "ANSIBLE_ROLES_PATH": str(playbook.parent),
                "ANSIBLE_NOCOLOR": "1",
            },
        )
        status, rc = runner.status, runner.rc
    # Report under the names the operator typed (HOST:PORT), one row each.
    names = {inventory_name(h): h for h in hosts}
    by_host = {names.get(name, name): counts for name, counts in hosts_summary.items()}
    for name in hosts:
        counts = by_host.setdefault(name, {})
        for counter in ("ok", "changed", "failures", "dark", "skipped"):
            counts.setdefault(counter, 0)
    for failure in failures:
        failure.host = names.get(failure.host, failure.host)
    return ProvisionResult(status=status, rc=rc, hosts=by_host, failures=failures)
