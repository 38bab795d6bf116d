"""A one-node Slurm cluster on 127.0.0.1 for the queue tests: munged, slurmctld and slurmd from Debian, each
with its own config, state folders, ports and munge socket/key inside a temporary folder, so it never meets
the machine's own Slurm or another test's. One fake GPU (gres on /dev/null) lets `--gres=gpu:1` jobs run.

    with LocalSlurm(tmp) as cluster:
        job = cluster.sbatch(script_path)        # job id
        cluster.wait(job)                         # -> final state, e.g. "COMPLETED"
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support import processes

NODE = "scipionnode"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemons:
    """Slurm's daemons as this test's children: each logs to tmp/log/<name>.out.log; `_wait_for` fails at
    once, with the logs, when one of them exits while we wait. Client commands (`run`) reach them through
    `_client(argv)`: as they are on one node, inside the controller's network namespace on a cluster."""

    tmp: Path
    conf: Path
    processes: list[subprocess.Popen]
    _logs: list

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _client(self, argv: list[str]) -> list[str]:
        return argv

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(self._client(list(argv)), capture_output=True, text=True, env=self.env,
                                timeout=timeout, check=False)  # fmt: skip
        if check and result.returncode != 0:
            command = " ".join(argv)
            raise RuntimeError(f"{command} failed ({result.returncode}): {result.stderr}\n{self.logs()}")
        return result

    def _controller_answers(self) -> bool:
        return "UP" in self.run("scontrol", "ping", check=False).stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted((self.tmp / "log").glob("*"))
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.tmp / "log" / f"{name}.out.log").open("w")
        self._logs.append(log)
        self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _wait_for(self, check, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args} exited ({process.returncode}) waiting for {what}\n"
                                       f"{self.logs()}")  # fmt: skip
            if check():
                return
            time.sleep(0.3)
        raise TimeoutError(f"timed out waiting for {what}\n{self.logs()}")


class LocalSlurm(Daemons):
    def __init__(self, tmp: Path, cpus: int = 2, memory_mb: int = 1000, partition: str = "gpu"):
        self.tmp = Path(tmp)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.partition = partition
        self.conf = self.tmp / "etc/slurm.conf"
        self.munge_socket = self.tmp / "munge/munge.sock"
        self.processes: list[subprocess.Popen] = []
        self._logs: list = []

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> LocalSlurm:
        for sub in ("etc", "munge", "munge-key", "state", "spool", "log", "run"):
            (self.tmp / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.tmp / "munge-key", 0o700)
        key = self.tmp / "munge-key/munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        try:
            munged = ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                      f"--key-file={key}", f"--pid-file={self.tmp / 'munge/munged.pid'}",
                      f"--seed-file={self.tmp / 'munge/seed'}",
                      f"--log-file={self.tmp / 'log/munged.log'}"]  # fmt: skip
            self._spawn("munged", munged)
            self._wait_for(lambda: self.munge_socket.exists(), "munged socket")
            self._write_config()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait_for(self._controller_answers, "slurmctld")
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", NODE])
            self._wait_for(self._node_idle, "slurmd to register the node idle", timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop slurmd, slurmctld, munged (in that order) and wait for each."""
        for process in reversed(self.processes):
            processes.stop(process, timeout_s=20)
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    # -- client commands -----------------------------------------------------------------------------------
    def sbatch(self, script: Path, cwd: Path | None = None) -> str:
        """Submit like Scipion's SUBMIT_COMMAND (`sbatch <script>`); returns the job id."""
        result = subprocess.run(["sbatch", str(script)], capture_output=True, text=True, env=self.env,
                                cwd=cwd or script.parent, timeout=60, check=False)  # fmt: skip
        match = re.search(r"Submitted batch job (\d+)", result.stdout)
        if not match:
            raise RuntimeError(f"sbatch refused {script}: {result.stdout}{result.stderr}")
        return match.group(1)

    def wait(self, job: str, timeout: float = 60) -> str:
        """Wait until the job has left the queue; returns its final state (scontrol keeps it a while)."""
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            out = self.run("scontrol", "show", "job", job, check=False).stdout
            match = re.search(r"JobState=(\S+)", out)
            state = match.group(1) if match else state
            if state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job} still {state} after {timeout} s\n{self.logs()}")

    # -- internals -----------------------------------------------------------------------------------------
    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
        return f"{NODE} idle" in out

    def _write_config(self) -> None:
        t = self.tmp
        user = "root"
        self.conf.write_text(
            f"""# Test cluster on 127.0.0.1 ; the controller carries this machine's name
ClusterName=scipiontest
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
MailProg=/bin/true
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={t}/state
SlurmdSpoolDir={t}/spool
SlurmctldPidFile={t}/run/slurmctld.pid
SlurmdPidFile={t}/run/slurmd.pid
SlurmctldLogFile={t}/log/slurmctld.log
SlurmdLogFile={t}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} \\
 Gres=gpu:1 State=UNKNOWN
PartitionName={self.partition} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
        )
        # One fake GPU: gres needs a device file; /dev/null stands in for /dev/nvidia0.
        (t / "etc/gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu File=/dev/null\n")


def available() -> str | None:
    """None when the Slurm and munge programs are installed, else what is missing."""
    programs = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")
    missing = [p for p in programs if not shutil.which(p)]
    return ", ".join(missing) or None
