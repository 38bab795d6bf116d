"""A multi-node Slurm cluster on this machine for the Scipion queue tests.

munged, slurmctld and one slurmd per node from Debian. The controller and each node live in their own network
namespace and UTS namespace (own hostname, own address on a private bridge that exists only inside the
controller's namespace); nothing touches the machine's own network. The shared folder (the project file
system) is a plain folder every namespace sees. GPUs are gres backed by character devices like /dev/null
(Slurm 22.05 drops GPUs without a File).

    nodes = [Node("gpu1", gpus=2, partitions=("gpu",)), Node("cpu1", partitions=("cpu",))]
    with SlurmCluster(tmp, nodes, {"gpu": "MaxTime=12:00:00 Default=YES", "cpu": ""}) as cluster:
        cluster.run("sinfo")                           # client commands run in the controller's namespace
        cluster.in_controller(["python", "driver.py"])  # argv prefix for programs that submit jobs

Everything is released on exit and on a failed start: jobs cancelled, every process left in the namespaces
killed by pid, daemons stopped, namespaces deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import processes
from tests.support.slurm import Daemons

CONTROLLER = "scipionctl"
SLURM_PORT_CTLD = 6817  # inside our own namespaces: no other process can hold these ports
SLURM_PORT_D = 6818


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int = 2
    memory_mb: int = 2000
    gpus: int = 0
    gpu_type: str = ""
    partitions: tuple[str, ...] = ("gpu",)


class SlurmCluster(Daemons):
    def __init__(self, tmp: Path, nodes: list[Node], partitions: dict[str, str]):
        self.tmp = Path(tmp)
        self.nodes = nodes
        self.partitions = partitions
        self.conf = self.tmp / "etc/slurm.conf"
        self.munge_socket = self.tmp / "munge/munge.sock"
        tag = f"sc{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.netns_ctl = f"{tag}ctl"
        self.netns = {n.name: f"{tag}{n.name}" for n in nodes}
        self.subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
        self.addresses = {n.name: f"{self.subnet}.{10 + i}" for i, n in enumerate(nodes)}
        self.processes: list[subprocess.Popen] = []
        self._namespaces: list[str] = []
        self._logs: list = []

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> SlurmCluster:
        try:
            self._make_folders()
            self._make_network()
            self._start_munge()
            self._write_config()
            self._spawn(
                "slurmctld", self.in_controller(["slurmctld", "-D", "-f", str(self.conf)], CONTROLLER)
            )
            self._wait_for(self._controller_answers, "slurmctld")
            for node in self.nodes:
                argv = ["slurmd", "-D", "-f", str(self.conf), "-N", node.name]
                self._spawn(f"slurmd-{node.name}", self._in_node(node.name, argv))
            self._wait_for(self._nodes_idle, "every slurmd to register idle", timeout=90)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel jobs, end every process left in our namespaces, stop the daemons, delete the namespaces."""
        if self.processes and self.conf.exists():
            self.run("scancel", "--full", "--user", "root", check=False)
        for namespace in self._namespaces:
            self._kill_namespace_processes(namespace, keep={p.pid for p in self.processes})
        for process in reversed(self.processes):
            processes.stop(process, timeout_s=20)
        self.processes.clear()
        for namespace in reversed(self._namespaces):
            self._kill_namespace_processes(namespace, keep=set())
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
        self._namespaces.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    # -- using it ------------------------------------------------------------------------------------------
    def in_controller(self, argv: list[str], hostname: str = "scipiondesktop") -> list[str]:
        """argv run in the controller's network namespace (where sbatch/squeue reach slurmctld)."""
        return [*self._enter(self.netns_ctl), *self._with_hostname(hostname, argv)]

    def _client(self, argv: list[str]) -> list[str]:
        return self.in_controller(argv)  # `run` (Daemons): client commands reach slurmctld from its namespace

    def job(self, job_id: str | int) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-d", str(job_id), check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    # -- internals -----------------------------------------------------------------------------------------
    def _make_folders(self) -> None:
        for sub in ("etc", "munge", "munge-key", "state", "spool", "log", "run"):
            (self.tmp / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.tmp / "munge-key", 0o700)

    def _ip(self, *argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30)

    def _make_network(self) -> None:
        """A bridge inside the controller's namespace; one veth per node namespace plugged into it."""
        self._ip("netns", "add", self.netns_ctl)
        self._namespaces.append(self.netns_ctl)
        ctl = ["-n", self.netns_ctl]
        self._ip(*ctl, "link", "set", "lo", "up")
        self._ip(*ctl, "link", "add", "br0", "type", "bridge")
        self._ip(*ctl, "addr", "add", f"{self.subnet}.1/24", "dev", "br0")
        self._ip(*ctl, "link", "set", "br0", "up")
        for i, node in enumerate(self.nodes):
            namespace = self.netns[node.name]
            self._ip("netns", "add", namespace)
            self._namespaces.append(namespace)
            self._ip(
                *ctl, "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns", namespace
            )
            self._ip(*ctl, "link", "set", f"veth{i}", "master", "br0", "up")
            self._ip("-n", namespace, "link", "set", "lo", "up")
            self._ip("-n", namespace, "addr", "add", f"{self.addresses[node.name]}/24", "dev", "eth0")
            self._ip("-n", namespace, "link", "set", "eth0", "up")

    def _start_munge(self) -> None:
        key = self.tmp / "munge-key/munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        munged = ["munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                  f"--pid-file={self.tmp / 'munge/munged.pid'}", f"--seed-file={self.tmp / 'munge/seed'}",
                  f"--log-file={self.tmp / 'log/munged.log'}"]  # fmt: skip
        self._spawn("munged", munged)  # a unix socket by path: every namespace reaches it
        self._wait_for(lambda: self.munge_socket.exists(), "munged socket")

    @staticmethod
    def _with_hostname(hostname: str, argv: list[str]) -> list[str]:
        script = 'hostname "$0" && exec "$@"'
        return ["unshare", "--uts", "sh", "-c", script, hostname, *argv]

    def _in_node(self, name: str, argv: list[str]) -> list[str]:
        return [*self._enter(self.netns[name]), *self._with_hostname(name, argv)]

    @staticmethod
    def _enter(namespace: str) -> list[str]:
        # nsenter rather than `ip netns exec`: the latter remounts /sys, hiding the cgroup file system slurmd
        # needs; nsenter changes only the network namespace.
        return ["nsenter", f"--net=/run/netns/{namespace}"]

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(n.name) == "idle" for n in self.nodes)

    @staticmethod
    def _kill_namespace_processes(namespace: str, keep: set[int]) -> None:
        """SIGKILL what still runs in a namespace we made (job steps, slurmstepd), by pid."""
        out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
        for pid in (int(p) for p in out.stdout.split() if p.isdigit()):
            if pid not in keep:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _write_config(self) -> None:
        t = self.tmp
        lines = [
            "# Test cluster: controller and nodes in their own network namespaces",
            "ClusterName=scipiontest",
            f"SlurmctldHost={CONTROLLER}({self.subnet}.1)",
            "MailProg=/bin/true",
            f"SlurmctldPort={SLURM_PORT_CTLD}",
            f"SlurmdPort={SLURM_PORT_D}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={t}/state",
            f"SlurmdSpoolDir={t}/spool/%n",
            f"SlurmctldPidFile={t}/run/slurmctld.pid",
            f"SlurmdPidFile={t}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={t}/log/slurmctld.log",
            f"SlurmdLogFile={t}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "GresTypes=gpu",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MinJobAge=300",
            "KillWait=2",
        ]
        gres_lines = ["AutoDetect=off"]
        for node in self.nodes:
            (t / "spool" / node.name).mkdir(parents=True, exist_ok=True)
            gres = ""
            if node.gpus:
                kind = f"{node.gpu_type}:" if node.gpu_type else ""
                gres = f" Gres=gpu:{kind}{node.gpus}"
                # Slurm 22.05 drops file-less GPUs ("Removing file-less GPU gpu:tesla from final GRES list")
                # and wants a device file: each fake GPU is a character device like /dev/null (1:3); with
                # task/none nothing opens it.
                devices = t / "dev" / node.name
                devices.mkdir(parents=True, exist_ok=True)
                for index in range(node.gpus):
                    device = devices / f"nvidia{index}"
                    if not device.exists():
                        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
                type_field = f" Type={node.gpu_type}" if node.gpu_type else ""
                files = f"{devices}/nvidia[0-{node.gpus - 1}]" if node.gpus > 1 else f"{devices}/nvidia0"
                gres_lines.append(f"NodeName={node.name} Name=gpu{type_field} File={files}")
            lines.append(
                f"NodeName={node.name} NodeHostname={node.name} NodeAddr={self.addresses[node.name]} "
                f"CPUs={node.cpus} RealMemory={node.memory_mb}{gres} State=UNKNOWN"
            )
        for partition, options in self.partitions.items():
            members = ",".join(n.name for n in self.nodes if partition in n.partitions)
            lines.append(f"PartitionName={partition} Nodes={members} State=UP {options}".rstrip())
        self.conf.write_text("\n".join(lines) + "\n")
        (t / "etc/gres.conf").write_text("\n".join(gres_lines) + "\n")


def available() -> str | None:
    """None when Slurm, munge, iproute2 and util-linux's unshare are installed, else what is missing."""
    programs = (
        "munged",
        "slurmctld",
        "slurmd",
        "sbatch",
        "scontrol",
        "sinfo",
        "squeue",
        "ip",
        "unshare",
        "nsenter",
    )
    missing = [p for p in programs if not shutil.which(p)]
    return ", ".join(missing) or None
