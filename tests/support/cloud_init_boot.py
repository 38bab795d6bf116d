"""Stand-in for cloud-init's boot stages on the rehearsal's build instance: a fresh Ubuntu AMI is still
running cloud-init when Packer connects, and roles/common must wait for it before its first apt task.

Only the stages are stood in; the program that answers is the real `cloud-init status --wait` of the root
filesystem's own cloud-init package. The stand-in writes what cloud-init's stages write
(cloudinit/cmd/main.py, status_wrapper(), cloud-init 22.4.2 as in the root filesystem):
/var/lib/cloud/data/status.json `{"v1": {"datasource": ..., "stage": <running stage or null>, "<stage>":
{"errors": [], "start": <time>, "finished": <time or null>}, ...}}`, and after the last stage
(modules-final) /var/lib/cloud/data/result.json `{"v1": {"datasource": ..., "errors": []}}`; /run/cloud-init
holds relative links to both (sshd_target.start(cloud_init=True) makes them in the target's /run).
cloudinit/cmd/status.py reports "running" while status.json exists without result.json, or while a stage
has a start and no finish, and `--wait` polls it every 0.25 s while the status is "not run" or "running".

    boot = CloudInitBoot(root)
    boot.start()                                  # stages init-local and init done, modules-config running
    threading.Thread(target=boot.finish_after_waited, args=(3, stop_event)).start()
    ... the bake ...
    boot.times -> {"waiter_seen": t, "done": t, "waiter_gone": t}; boot.still_waiting_at_done
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

DATA_DIR = "var/lib/cloud/data"  # cloud-init's paths.get_cpath("data")
MODES = ("init", "init-local", "modules-init", "modules-config", "modules-final")  # status_wrapper's modes
DATASOURCE = "DataSourceEc2Local"  # what an EC2 instance reports


class CloudInitBoot:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / DATA_DIR
        self.times: dict[str, float] = {}
        self.still_waiting_at_done = False

    def _write(self, name: str, doc: dict) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        tmp = self.data / f".{name}.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.rename(self.data / name)  # atomic, as cloud-init's atomic_helper.write_json

    def _status(self, running: str | None) -> dict:
        now = time.time()
        v1: dict = {"datasource": DATASOURCE, "stage": running}
        for mode in MODES:
            v1[mode] = {"errors": [], "start": None, "finished": None}
        for mode in ("init-local", "init", "modules-config", "modules-final"):  # the order systemd runs them
            v1[mode]["start"] = now
            if mode == running:
                return {"v1": v1}
            v1[mode]["finished"] = now
        return {"v1": v1}

    def start(self) -> None:
        """Boot in progress: the config modules are running."""
        (self.data / "result.json").unlink(missing_ok=True)
        self._write("status.json", self._status("modules-config"))

    def finish(self) -> None:
        """Every stage finished without errors: status.json, then result.json, as modules-final does."""
        self._write("status.json", self._status(None))
        self._write("result.json", {"v1": {"datasource": DATASOURCE, "errors": []}})
        self.times["done"] = time.time()

    def waiters(self) -> list[int]:
        """`cloud-init status --wait` processes whose root is this root filesystem."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if not (b"status" in argv and b"--wait" in argv):
                    continue
                ours = os.path.samefile(entry / "root", self.root)
                if ours and any(arg.endswith(b"cloud-init") for arg in argv):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone, or not ours to read
        return found

    def finish_after_waited(self, wait_s: float, stop: threading.Event) -> None:
        """Keep running until a `cloud-init status --wait` has waited `wait_s`, then finish and note whether
        it was still waiting and when it ended. Without a waiter (`stop` set first) nothing is finished,
        and times has no "waiter_seen": the test says so."""
        while not self.waiters():
            if stop.wait(0.1):
                return
        self.times["waiter_seen"] = time.time()
        stop.wait(wait_s)
        self.still_waiting_at_done = bool(self.waiters())
        self.finish()
        while self.waiters() and not stop.wait(0.1):
            pass
        self.times["waiter_gone"] = time.time()
