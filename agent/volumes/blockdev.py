"""Discovery: the block devices the agent may manage, each with its EBS volume id, signature, mountpoints
and a state (blank, formatted, partitioned, mounted, root, or unknown with the reason)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from agent import shell
from agent.config import StorageConfig
from agent.errors import ApiError
from agent.volumes import signatures

BY_ID = Path("/dev/disk/by-id")
EBS_BY_ID = "nvme-Amazon_Elastic_Block_Store_"
SYS_BLOCK = Path("/sys/class/block")
VOLUME_ID = re.compile(r"^vol-?([0-9a-f]{8,17})$")


def volume_id_from_serial(serial: str | None) -> str | None:
    """EBS puts the volume id in the NVMe serial without its dash: 'vol0abc...' -> 'vol-0abc...'."""
    match = VOLUME_ID.match((serial or "").strip())
    return f"vol-{match.group(1)}" if match else None


def volume_ids_by_kname(by_id: Path = BY_ID) -> dict[str, str]:
    """Kernel name -> volume id from the udev links nvme-Amazon_Elastic_Block_Store_vol..., when present."""
    found: dict[str, str] = {}
    if not by_id.is_dir():
        return found
    for link in by_id.iterdir():
        if not link.name.startswith(EBS_BY_ID) or "-part" in link.name:
            continue
        volume = volume_id_from_serial(link.name[len(EBS_BY_ID) :].split("_")[0])
        if volume:
            found[Path(os.path.realpath(link)).name] = volume
    return found


@dataclass
class Partition:
    name: str
    path: str
    size: int
    signature: dict | None
    mountpoints: list[str]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "signature": self.signature,
            "mountpoints": self.mountpoints,
        }


@dataclass
class BlockDevice:
    name: str
    path: str
    size: int
    type: str
    model: str | None
    serial: str | None
    volume_id: str | None
    mountpoints: list[str]
    signature: dict | None
    partitions: list[Partition] = field(default_factory=list)
    state: str = "blank"
    reason: str | None = None  # why the state is "unknown" (blkid could not say what the device holds)
    backing_file: str | None = None
    logical_block_size: int = 512

    @property
    def address(self) -> str:
        """How the API names it: the EBS volume id when there is one (stable across boots), else the name."""
        return self.volume_id or self.name

    @property
    def identity(self) -> str:
        """What stored state is keyed by: volume id, else a loop device's backing file, else the name."""
        if self.volume_id:
            return self.volume_id
        if self.backing_file:
            return f"loop:{self.backing_file}"
        return f"dev:{self.name}"

    def all_mountpoints(self) -> list[str]:
        return self.mountpoints + [m for p in self.partitions for m in p.mountpoints]

    def to_json(self) -> dict:
        return {
            "id": self.address,
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "type": self.type,
            "model": self.model,
            "volume_id": self.volume_id,
            "state": self.state,
            "reason": self.reason,
            "signature": self.signature,
            "mountpoints": self.mountpoints,
            "partitions": [p.to_json() for p in self.partitions],
        }


def _mountpoints(node: dict) -> list[str]:
    return [m for m in node.get("mountpoints") or [] if m]


def root_knames(protected_mounts: tuple[str, ...]) -> set[str]:
    """Kernel names of the devices under each protected mountpoint and of everything those sit on
    (a partition's disk, an LVM volume's physical disks), found with `lsblk --inverse`."""
    names: set[str] = set()
    for mountpoint in {"/", *protected_mounts}:
        found = shell.run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", mountpoint], ok=(0, 1))
        source = found.stdout.strip().split("[")[0]  # btrfs subvolumes read /dev/x[/@]
        if not source.startswith("/dev/"):
            continue  # overlay, tmpfs: no block device to protect
        tree = shell.run(["lsblk", "-J", "-s", "-o", "KNAME", source], ok=(0, 1, 32))
        stack = json.loads(tree.stdout or '{"blockdevices": []}')["blockdevices"]
        while stack:
            node = stack.pop()
            names.add(node["kname"])
            stack.extend(node.get("children", []))
    return names


def _read_sys(name: str, *parts: str) -> str | None:
    try:
        return (SYS_BLOCK / name).joinpath(*parts).read_text().strip()
    except OSError:
        return None


def discover(storage: StorageConfig) -> list[BlockDevice]:
    """Every whole disk (and, with include_loop, every attached loop device) with what it holds."""
    listing = shell.run(
        ["lsblk", "-J", "-b", "-o", "NAME,KNAME,PATH,SIZE,MODEL,SERIAL,TYPE,MOUNTPOINTS"]
    ).stdout
    roots = root_knames(storage.protected_mounts)
    by_id = volume_ids_by_kname()
    kinds = {"disk", "loop"} if storage.include_loop else {"disk"}
    devices = []
    for node in json.loads(listing)["blockdevices"]:
        if node["type"] not in kinds or not node.get("size"):
            continue  # zero-sized: an unattached loop or an empty zram
        kname = node["kname"]
        problems: list[str] = []
        partitions = [
            Partition(
                name=child["kname"],
                path=child["path"],
                size=int(child["size"] or 0),
                signature=_probe(child["path"], problems),
                mountpoints=_mountpoints(child),
            )
            for child in node.get("children", [])
            if child["type"] == "part"
        ]
        device = BlockDevice(
            name=kname,
            path=node["path"],
            size=int(node["size"]),
            type=node["type"],
            model=(node.get("model") or "").strip() or None,
            serial=(node.get("serial") or "").strip() or None,
            volume_id=volume_id_from_serial(node.get("serial")) or by_id.get(kname),
            mountpoints=_mountpoints(node),
            signature=_probe(node["path"], problems),
            partitions=partitions,
            backing_file=_read_sys(kname, "loop", "backing_file"),
            logical_block_size=int(_read_sys(kname, "queue", "logical_block_size") or 512),
        )
        held = any(c["type"] != "part" for c in node.get("children", []))  # dm/LVM/md on top of it
        device.state = _state(device, kname in roots or any(p.name in roots for p in partitions), held)
        if problems and device.state not in ("root", "mounted"):
            device.state, device.reason = "unknown", "; ".join(problems)
        devices.append(device)
    return devices


def _probe(path: str, problems: list[str]) -> dict | None:
    """One device's signature; a device blkid cannot read is noted in `problems`, never an error for all."""
    try:
        return signatures.probe(path)
    except signatures.ProbeError as exc:
        problems.append(f"{path}: {exc}")
        return None


def _state(device: BlockDevice, is_root: bool, held: bool) -> str:
    if is_root:
        return "root"
    if device.all_mountpoints() or held:
        return "mounted"
    if device.partitions or (device.signature or {}).get("PTTYPE"):
        return "partitioned"
    if device.signature:
        return "formatted"
    return "blank"


def find(storage: StorageConfig, address: str) -> BlockDevice:
    """The device named by an EBS volume id ('vol-...' or 'vol...'), a kernel name or a /dev path; 404 if
    the agent does not manage one by that name."""
    wanted = volume_id_from_serial(address) or address
    devices = discover(storage)
    for device in devices:
        if wanted in (device.volume_id, device.name, device.path) or f"/dev/{wanted}" == device.path:
            return device
    known = ", ".join(d.address for d in devices) or "none"
    raise ApiError(404, f"no volume {address!r} here; GET /v1/volumes lists them (known: {known})")
