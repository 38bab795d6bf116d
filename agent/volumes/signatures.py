"""What a block device holds, read with the tools made for it (blkid -p, wipefs -n), and the proof that a
device is blank before anything may format it."""

from __future__ import annotations

import json
from pathlib import Path

from agent import shell

# The keys of `blkid -p -o export` we report; USAGE says filesystem, crypto, raid or other (swap).
KEYS = ("TYPE", "UUID", "LABEL", "PTTYPE", "PTUUID", "USAGE", "VERSION")


PROBE_TIMEOUT_S = 10  # a device that does not answer blkid in this long is listed as unreadable


class ProbeError(RuntimeError):
    """blkid could not say what the device holds (ambivalent: several signatures; or it failed): the device
    is listed with this reason and never formatted; other devices are not affected."""


def probe(path: str) -> dict[str, str] | None:
    """Low-level probe of the device itself (not the udev cache, which is absent here): None when blkid
    finds no signature at all (it exits 2), else the signature's fields. Exit 8 (ambivalent: more than one
    signature) and any other failure raise ProbeError."""
    try:
        result = shell.run(["blkid", "-p", "-o", "export", path], ok=(0, 2), timeout=PROBE_TIMEOUT_S)
    except shell.CommandError as exc:
        if exc.returncode == 8:
            raise ProbeError(
                f"blkid -p finds more than one signature (ambivalent): {exc.first_line}"
            ) from None
        raise ProbeError(f"blkid -p failed ({exc.returncode}): {exc.first_line}") from None
    if result.returncode == 2:
        return None
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {key: fields[key] for key in KEYS if key in fields}


def wipefs_signatures(path: str) -> list[dict]:
    """Every signature wipefs sees (it looks at more places than blkid's first match); -n: read only."""
    result = shell.run(["wipefs", "-n", "-J", path], timeout=PROBE_TIMEOUT_S)
    if not result.stdout.strip():
        return []
    return json.loads(result.stdout).get("signatures", [])


def holders(name: str, sysfs: Path = Path("/sys/class/block")) -> list[str]:
    """Devices built on top of this one (device-mapper, LVM, md): a held device is in use."""
    folder = sysfs / name / "holders"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def not_blank_reasons(device) -> list[str]:
    """Every test a device must pass before it may be formatted; an empty list is the proof it is blank.
    `device` is an agent.volumes.blockdev.BlockDevice, re-probed here rather than trusted from a listing."""
    reasons = []
    if device.state == "root":
        reasons.append("it holds the root filesystem (or something / depends on)")
    if device.all_mountpoints():
        reasons.append(f"it is mounted at {', '.join(device.all_mountpoints())}")
    if device.partitions:
        reasons.append(f"it has partitions: {', '.join(p.name for p in device.partitions)}")
    held = holders(device.name)
    if held:
        reasons.append(f"it is held by {', '.join(held)}")
    try:
        signature = probe(device.path)
    except ProbeError as exc:
        reasons.append(str(exc))
        signature = None
    if signature is not None:
        what = signature.get("TYPE") or (signature.get("PTTYPE") and f"{signature['PTTYPE']} partition table")
        reasons.append(f"blkid -p finds a signature: {what or signature}")
        if signature.get("PTTYPE"):
            reasons.append(f"it has a {signature['PTTYPE']} partition table")
    try:
        found = wipefs_signatures(device.path)
    except shell.CommandError as exc:
        reasons.append(f"wipefs could not read it: {exc.first_line}")
        found = []
    if found:
        reasons.append(
            "wipefs lists " + ", ".join(f"{s.get('type')} at offset {s.get('offset')}" for s in found)
        )
    return reasons
