"""The agent's own lines in fstab: added and removed by UUID, each behind a marker comment so lines
written by people are never touched, and the file replaced atomically after findmnt has checked it.

A crash at any step leaves either the old file or the new one, and both pass `findmnt --verify`."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import shell

MARKER = "# scipioncloud-agent:"
OPTIONS = "defaults,nofail,x-systemd.device-timeout=10s"  # nofail: a missing volume never stops a boot


class FstabError(RuntimeError):
    """The candidate fstab did not pass findmnt --verify; nothing was changed."""


@dataclass(frozen=True)
class Entry:
    uuid: str
    mountpoint: str
    fstype: str
    volume: str

    def lines(self) -> list[str]:
        return [
            f"{MARKER} {self.volume} uuid={self.uuid}",
            f"UUID={self.uuid} {escape(self.mountpoint)} {self.fstype} {OPTIONS} 0 2",
        ]


def escape(path: str) -> str:
    """fstab fields are separated by blanks; spaces and tabs in a path are written octal-escaped."""
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")


def agent_entries(text: str) -> list[Entry]:
    """The lines the agent owns: a marker comment immediately followed by the UUID line it names."""
    lines = text.splitlines()
    found = []
    for marker, line in itertools.pairwise(lines):
        match = re.match(rf"^{re.escape(MARKER)} (\S+) uuid=(\S+)$", marker)
        fields = line.split()
        if match and len(fields) >= 3 and fields[0] == f"UUID={match.group(2)}":
            found.append(Entry(match.group(2), fields[1], fields[2], match.group(1)))
    return found


def without(text: str, uuid: str) -> str:
    """`text` minus the agent's marker and line for `uuid`; everything else kept byte for byte. A marker
    whose next line is not the one it names (someone edited it) is dropped, and that next line kept."""
    lines = text.splitlines(keepends=True)
    kept = []
    skip_next = False
    for index, line in enumerate(lines):
        if skip_next:
            skip_next = False
            continue
        if line.startswith(f"{MARKER} ") and line.rstrip().endswith(f" uuid={uuid}"):
            following = lines[index + 1].split() if index + 1 < len(lines) else []
            skip_next = bool(following) and following[0] == f"UUID={uuid}"
            continue
        kept.append(line)
    return "".join(kept)


def with_entry(text: str, entry: Entry) -> str:
    """`text` with exactly one agent line for entry.uuid (the same volume mounted twice stays one line)."""
    base = without(text, entry.uuid)
    if base and not base.endswith("\n"):
        base += "\n"
    return base + "\n".join(entry.lines()) + "\n"


def verify(path: Path) -> tuple[int, set[str]]:
    """findmnt --verify on a file: (parse errors, the set of error lines naming what is wrong)."""
    result = shell.run(["findmnt", "--verify", "--tab-file", str(path)], ok=(0, 1))
    output = result.stdout + result.stderr
    parse = re.search(r"(\d+) parse errors?", output)
    errors, target = set(), ""
    for line in output.splitlines():
        if line and not line.startswith(" "):
            target = line.strip()
        elif line.strip().startswith("[E]"):
            errors.add(f"{target}: {line.strip()[4:]}")
    return (int(parse.group(1)) if parse else 0), errors


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One writer at a time, across the server and the CLI."""
    lock = path.with_name(f".{path.name}.scipioncloud.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(path: Path, text: str, step: Callable[[str], None] = lambda name: None) -> None:
    """Replace `path` with `text`: temporary file, fsync, findmnt --verify, backup of the old file,
    rename, fsync of the folder. The candidate may not bring an error the current file does not have.
    `step` is called after each stage (tests use it to die there)."""
    temporary = path.with_name(f".{path.name}.scipioncloud.tmp")
    backup = path.with_name(f"{path.name}.scipioncloud.bak")
    old = path.read_text() if path.exists() else ""
    _write_synced(temporary, text)
    os.chmod(temporary, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
    step("temporary-written")
    parse_errors, errors = verify(temporary)
    old_errors = verify(path)[1] if path.exists() else set()
    new_errors = errors - old_errors
    if parse_errors or new_errors:
        temporary.unlink()
        problems = sorted(new_errors) + ([f"{parse_errors} parse error(s)"] if parse_errors else [])
        raise FstabError(f"refusing to write {path}: findmnt --verify reports " + "; ".join(problems))
    step("verified")
    backup_temporary = backup.with_name(f".{backup.name}.tmp")
    _write_synced(backup_temporary, old)
    os.replace(backup_temporary, backup)
    step("backup-written")
    os.replace(temporary, path)
    step("renamed")
    _sync_dir(path.parent)
    step("synced")


def add(path: Path, entry: Entry) -> bool:
    """Add (or replace) the agent's line for entry.uuid; False when the file already said exactly that."""
    with locked(path):
        text = path.read_text() if path.exists() else ""
        new = with_entry(text, entry)
        if new == text:
            return False
        replace(path, new)
        return True


def remove(path: Path, uuid: str) -> bool:
    """Remove the agent's line for `uuid`; False when there was none."""
    with locked(path):
        text = path.read_text() if path.exists() else ""
        new = without(text, uuid)
        if new == text:
            return False
        replace(path, new)
        return True
