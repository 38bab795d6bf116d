"""Format (only a device proven blank), mount and unmount volumes, keeping the agent's fstab lines in step.
The same functions serve the HTTP routes and `scipioncloud-agent mount`."""

from __future__ import annotations

import logging
import os
import pwd
import re
from pathlib import Path

import psutil

from agent import shell
from agent.config import DEFAULT_MOUNT_FORMAT, MOUNT_FORMATS, StorageConfig
from agent.errors import ApiError
from agent.volumes import blank, blockdev, fstab, origin, signatures
from agent.volumes.blockdev import BlockDevice

log = logging.getLogger(__name__)

FSTYPES = {"ext4": 16, "xfs": 12}  # supported filesystems -> longest label each accepts
FORMATS = MOUNT_FORMATS
LABEL = re.compile(r"[A-Za-z0-9_.-]+")  # fullmatch: "$" would let a trailing newline through


NAME_MAX = 255  # bytes per path component (Linux)
PATH_MAX = 4096
# C0/C1 controls and the Unicode line and paragraph separators: none of them belongs in an fstab field.
FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_mountpoint(mountpoint: object, roots: tuple[str, ...]) -> Path:
    """An absolute path without '..', control characters or over-long components that lies (after
    following symlinks) under one of the mount roots. Only reads: nothing is created here."""
    if not isinstance(mountpoint, str) or not mountpoint.startswith("/"):
        raise ApiError(400, "mountpoint must be an absolute path", mountpoint=str(mountpoint)[:300])
    if FORBIDDEN.search(mountpoint) or ".." in mountpoint.split("/"):
        raise ApiError(
            400,
            "mountpoint may not contain '..', control characters or line/paragraph separators",
            mountpoint=ascii(mountpoint)[:300],
        )
    try:
        encoded = mountpoint.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON's \ud800
        raise ApiError(400, "mountpoint is not valid UTF-8", mountpoint=ascii(mountpoint)[:300]) from None
    if len(encoded) >= PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise ApiError(
            400,
            f"mountpoint too long: at most {NAME_MAX} bytes per component and {PATH_MAX - 1} in all",
            mountpoint=mountpoint[:300],
        )
    path = Path(os.path.normpath(mountpoint))
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            _check_nothing_in_the_way(path)
            return path
    raise ApiError(
        400,
        f"mountpoint {mountpoint} is outside the mount roots; use a path under {' or '.join(roots)} "
        "(storage.mount_roots in the agent's config)",
        mountpoint=mountpoint,
        mount_roots=list(roots),
    )


def _check_nothing_in_the_way(path: Path) -> None:
    """Every part of the path that exists must be a folder, so that creating the rest cannot fail."""
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            raise ApiError(409, f"{part} is a file in the way of mountpoint {path}; pick another mountpoint")


def check_options(fstype: object, format: object, label: object) -> None:
    if not isinstance(fstype, str) or fstype not in FSTYPES:
        raise ApiError(400, f"fstype must be one of {', '.join(FSTYPES)}", fstype=str(fstype)[:100])
    if not isinstance(format, str) or format not in FORMATS:
        raise ApiError(400, f"format must be one of {', '.join(FORMATS)}", format=str(format)[:100])
    if label is not None and (
        not isinstance(label, str) or not LABEL.fullmatch(label) or len(label) > FSTYPES[fstype]
    ):
        raise ApiError(
            400,
            f"label: letters, digits, '_', '.', '-', at most {FSTYPES[fstype]} for {fstype}",
            label=ascii(label)[:100],
        )


def check_blank(storage: StorageConfig, device: BlockDevice) -> list[str]:
    """Why `device` may not be formatted; an empty list is the proof it is blank: no signature, zeros at the
    head, the tail and the samples between (agent/volumes/blank.py), and on EC2 a volume AWS says was not
    created from a snapshot. Only reads."""
    reasons = signatures.not_blank_reasons(device)
    if reasons:
        return reasons  # a signature says enough; no need to read further
    if device.volume_id:
        found = origin.of_volume(device.volume_id, timeout=storage.aws_timeout_s)
        if found.snapshot_id:
            return [
                f"EBS volume {device.volume_id} was created from snapshot {found.snapshot_id}: it holds the "
                "snapshot's data even where it reads zeros"
            ]
        if not found.known and not storage.format_unverified_ebs:
            return [
                f"AWS could not confirm that EBS volume {device.volume_id} was not created from a snapshot "
                f"({found.why_unknown}); allow ec2:DescribeVolumes to the instance's role, or set "
                "storage.format_unverified_ebs = true to rely on the zero samples alone"
            ]
    try:
        scan = blank.scan(device.path, device.size)
    except OSError as exc:  # an I/O error is no proof of anything
        return [f"it could not be read to check for data: {exc.strerror or exc}"]
    if scan.nonzero_at is not None:
        return [
            f"it holds data without a signature: non-zero bytes at offset {scan.nonzero_at} "
            f"(checked {scan.bytes_read} bytes in {scan.reads} reads)"
        ]
    return []


NO_DISCARD = {"ext4": ["-E", "nodiscard"], "xfs": ["-K"]}


def _mkfs(device: BlockDevice, fstype: str, label: str | None) -> None:
    # No -F / -f: mkfs itself refuses a device that holds anything, a second guard behind our proof.
    # No discard either: a TRIM frees every block at once, and nothing could bring back what the proof
    # might have missed between its samples; a proven-blank device gains nothing from it.
    argv = [f"mkfs.{fstype}", "-q", *NO_DISCARD[fstype]] + (["-L", label] if label else []) + [device.path]
    try:
        shell.run(argv, timeout=600)
    except shell.CommandError as exc:
        raise ApiError(409, f"mkfs.{fstype} refused {device.path}: {exc.first_line}") from None


def _is_mountpoint(path: Path) -> bool:
    return shell.run(["findmnt", "-n", "--mountpoint", str(path)], ok=(0, 1)).returncode == 0


def mount(
    storage: StorageConfig,
    address: str,
    mountpoint: object,
    fstype: object = "ext4",
    format: object = DEFAULT_MOUNT_FORMAT,
    label: object = None,
    owner: str | None = None,
) -> dict:
    """Mount the volume at `mountpoint` and keep one agent line for it in fstab. format='if-blank' formats
    a device proven blank and refuses (409) any other; format='never' mounts an existing filesystem and
    refuses a blank device. Mounting again where it already is changes nothing. Every check runs before
    anything changes. A new filesystem's root is given to `owner` (the desktop user) when that user exists."""
    device = blockdev.find(storage, address)  # 404 first: nothing else is worth checking without it
    check_options(fstype, format, label)
    target = check_mountpoint(mountpoint, storage.mount_roots)
    if device.state == "root":
        raise ApiError(409, f"{device.path} holds the root filesystem; the agent never touches it")
    if device.state == "mounted":
        if [str(target)] == device.mountpoints and device.signature:
            changed = _ensure_line(storage, device, target)
            return _result(device, target, formatted=False, fstab_changed=changed)
        raise ApiError(
            409,
            f"{device.path} is already in use (mounted at "
            f"{', '.join(device.all_mountpoints()) or 'a holder'}); unmount it first",
            mountpoints=device.all_mountpoints(),
        )
    if target.exists() and (not target.is_dir() or _is_mountpoint(target) or any(target.iterdir())):
        raise ApiError(409, f"{target} is not an empty, unused folder; pick another mountpoint")
    try:
        fstab.check_editable(storage.fstab)  # before mkfs: an fstab findmnt cannot parse refuses every edit
    except fstab.FstabError as exc:
        raise ApiError(409, f"{exc}; {device.path} was left untouched") from None
    formatted = False
    if device.state == "blank":
        if format != "if-blank":
            raise ApiError(409, f"{device.path} is blank; pass format=if-blank to format it as {fstype}")
        reasons = check_blank(storage, device)
        if reasons:
            raise ApiError(
                409,
                f"{device.path} is not proven blank: {'; '.join(reasons)}; it was left untouched",
                signature=device.signature,
            )
        _mkfs(device, str(fstype), label if isinstance(label, str) else None)
        device.signature = signatures.probe(device.path)
        formatted = True
    elif format == "if-blank":
        # Asked to format, and it is not blank: refuse, change nothing, say what is there.
        sig = device.signature or {}
        hint = (
            f"; to mount the {sig['TYPE']} filesystem as it is, use format=never"
            if sig.get("USAGE") == "filesystem" and device.state == "formatted"
            else ""
        )
        raise ApiError(
            409,
            f"{device.path} is not blank: it holds {_describe(device)}; it was left untouched{hint}",
            signature=device.signature,
            state=device.state,
        )
    elif device.state == "partitioned" or (device.signature or {}).get("USAGE") != "filesystem":
        raise ApiError(
            409,
            f"{device.path} holds {_describe(device)}, not a filesystem the agent mounts; "
            "it was left untouched",
            signature=device.signature,
            state=device.state,
        )
    if not device.signature or not device.signature.get("UUID"):
        raise ApiError(
            409, f"{device.path} has no filesystem UUID to put in fstab", signature=device.signature
        )
    _make_folders(target)
    changed = _ensure_line(storage, device, target)
    try:
        # Mount through the fstab line itself: proves the line works before anyone reboots on it.
        shell.run(["mount", "-T", str(storage.fstab), str(target)], timeout=120)
    except shell.CommandError as exc:
        if changed:
            fstab.remove(storage.fstab, device.signature["UUID"])
        raise ApiError(409, f"mount {device.path} at {target} failed: {exc.stderr}") from None
    log.info("mounted %s (%s) at %s", device.path, device.address, target)
    if formatted:
        _hand_root_to(target, owner)
    return _result(device, target, formatted=formatted, fstab_changed=changed)


def _make_folders(target: Path) -> None:
    """Create the missing folders down to `target`, each 0755 whatever the umask: under the unit's
    UMask=0077 they would be 0700 and the desktop user could not reach the volume."""
    for folder in [*reversed(target.parents), target]:
        if not folder.exists():
            folder.mkdir(exist_ok=True)
            os.chmod(folder, 0o755)  # noqa: S103 - folders on the way to a mountpoint are public


def _hand_root_to(target: Path, owner: str | None) -> None:
    """A new filesystem's root belongs to root, 0755: give it to the desktop user, who works there."""
    try:
        user = pwd.getpwnam(owner) if owner else None
    except KeyError:
        user = None
    if user is None:
        log.warning("desktop user %r does not exist: %s stays owned by root", owner, target)
        return
    os.chown(target, user.pw_uid, user.pw_gid)
    os.chmod(target, 0o755)  # noqa: S103 - the usual mode of a filesystem root


def _describe(device: BlockDevice) -> str:
    if device.state == "unknown":
        return f"something blkid cannot name ({device.reason})"
    sig = device.signature or {}
    if device.state == "partitioned":
        return f"a {sig.get('PTTYPE', 'partition')} table" if sig.get("PTTYPE") else "partitions"
    return sig.get("TYPE", "an unknown signature")


def _ensure_line(storage: StorageConfig, device: BlockDevice, target: Path) -> bool:
    entry = fstab.Entry(device.signature["UUID"], str(target), device.signature["TYPE"], device.address)
    try:
        return fstab.add(storage.fstab, entry)
    except fstab.FstabError as exc:
        raise ApiError(409, str(exc)) from None


def _result(device: BlockDevice, target: Path, *, formatted: bool, fstab_changed: bool) -> dict:
    return {
        "volume": device.address,
        "device": device.path,
        "mountpoint": str(target),
        "fstype": (device.signature or {}).get("TYPE"),
        "uuid": (device.signature or {}).get("UUID"),
        "formatted": formatted,
        "fstab_changed": fstab_changed,
    }


def holders_of(mountpoint: str) -> list[dict]:
    """Processes with files, a working folder or a root under `mountpoint` (fuser -m names their pids)."""
    result = shell.run(["fuser", "-m", mountpoint], ok=(0, 1))
    procs = []
    for pid in sorted({int(p) for p in re.findall(r"\d+", result.stdout)}):
        try:
            proc = psutil.Process(pid)
            procs.append({"pid": pid, "name": proc.name(), "cmdline": " ".join(proc.cmdline())[:200]})
        except psutil.Error:
            continue  # ended meanwhile
    return procs


def unmount(storage: StorageConfig, address: str) -> dict:
    """Unmount every mount of the volume under the mount roots and remove the agent's fstab line; a busy
    mount is refused with the processes holding it."""
    device = blockdev.find(storage, address)
    if device.state == "root":
        raise ApiError(409, f"{device.path} holds the root filesystem; the agent never touches it")
    mountpoints = device.all_mountpoints()
    for mountpoint in mountpoints:
        try:
            check_mountpoint(mountpoint, storage.mount_roots)
        except ApiError:
            raise ApiError(
                409, f"{device.path} is mounted at {mountpoint}, outside the mount roots; unmount it yourself"
            ) from None
    uuid = (device.signature or {}).get("UUID")
    if uuid:
        try:
            fstab.check_remove(storage.fstab, uuid)  # refuse before unmounting: a 409 changes nothing
        except fstab.FstabError as exc:
            raise ApiError(409, f"{device.path} was left mounted: {exc}") from None
    for mountpoint in mountpoints:
        try:
            shell.run(["umount", mountpoint], timeout=120)
        except shell.CommandError as exc:
            holders = holders_of(mountpoint)
            names = ", ".join(f"{h['name']} (pid {h['pid']})" for h in holders) or "unknown"
            raise ApiError(
                409,
                f"{mountpoint} is busy: held by {names}; close them and try again",
                processes=holders,
                detail=exc.stderr,
            ) from None
    try:
        removed = fstab.remove(storage.fstab, uuid) if uuid else False
    except fstab.FstabError as exc:  # fstab changed between the check and now
        raise ApiError(503, f"{device.path} was unmounted but its fstab line stays: {exc}") from None
    return {
        "volume": device.address,
        "device": device.path,
        "unmounted": mountpoints,
        "fstab_changed": removed,
    }
