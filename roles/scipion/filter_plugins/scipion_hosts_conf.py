"""Filter `scipion_hosts_conf`: Scipion's hosts.conf text from agent.scipion_hosts (one generator for the
role, the CLI and the tests). Filters run on the Ansible controller, where the package is installed
(make setup's .venv); from a bare checkout the repository root is put on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from agent.scipion_hosts import hostsconf, queues
except ImportError:  # ansible-playbook from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from agent.scipion_hosts import hostsconf, queues


def scipion_hosts_conf(slurm: bool, listed: list, scontrol: dict | None, mpi_command: str) -> str:
    """Local only when `slurm` is off; else the queues `listed` (role variable scipion_slurm_queues), or those
    of the machine's Slurm (`scontrol` = the registered loop over `scontrol show partition|node -o`)."""
    if not slurm:
        return hostsconf.render_local(mpi_command=mpi_command)
    if listed:
        found = queues.from_list(listed)
    else:
        outputs = {r["item"]: r.get("stdout", "") for r in (scontrol or {}).get("results", [])}
        found = queues.from_scontrol(outputs.get("partition", ""), outputs.get("node", ""))
    return hostsconf.render(found, mpi_command=mpi_command)


class FilterModule:
    def filters(self):
        return {"scipion_hosts_conf": scipion_hosts_conf}
