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


def fields(line: str) -> list[str]:
    """An fstab line's fields: separated by spaces and tabs only, as libmount reads them."""
    return [f for f in re.split(r"[ \t]+", line.strip(" \t")) if f]


def agent_entries(text: str) -> list[Entry]:
    """The lines the agent owns: a marker comment immediately followed by the UUID line it names. Lines end
    at "\n" only: a \r, \f or U+2028 inside someone's line does not start a new one (str.splitlines would)."""
    lines = text.split("\n")
    found = []
    for marker, line in itertools.pairwise(lines):
        match = re.fullmatch(rf"{re.escape(MARKER)} ([^ \t]+) uuid=([^ \t]+)", marker)
        parts = fields(line)
        if match and len(parts) >= 3 and parts[0] == f"UUID={match.group(2)}":
            found.append(Entry(match.group(2), parts[1], parts[2], match.group(1)))
    return found


def without(text: str, uuid: str) -> str:
    """`text` minus the agent's marker and line for `uuid`; everything else kept byte for byte. A marker
    whose next line is not the one it names (someone edited it) is dropped, and that next line kept."""
    lines = text.split("\n")  # "\n" only, as libmount; the last item is "" when text ends with "\n"
    kept = []
    skip_next = False
    for index, line in enumerate(lines):
        if skip_next:
            skip_next = False
            continue
        if line.startswith(f"{MARKER} ") and line.rstrip(" \t").endswith(f" uuid={uuid}"):
            following = fields(lines[index + 1]) if index + 1 < len(lines) else []
            skip_next = bool(following) and following[0] == f"UUID={uuid}"
            continue
        kept.append(line)
    return "\n".join(kept)


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


def _write_synced(path: Path, text: str, like: os.stat_result | None) -> None:
    """Write and fsync `text`, with the mode and owner of `like` (the fstab itself) whatever the umask:
    the backup of a 0600 file must not be world-readable, nor the new fstab unreadable to mount."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as handle:
        os.fchmod(fd, like.st_mode & 0o7777 if like else 0o644)
        if like and os.geteuid() == 0:
            os.fchown(fd, like.st_uid, like.st_gid)
        handle.write(text)
        handle.flush()
        os.fsync(fd)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_new_errors(path: Path, candidate: Path) -> None:
    parse_errors, errors = verify(candidate)
    old_errors = verify(path)[1] if path.exists() else set()
    new_errors = errors - old_errors
    if parse_errors or new_errors:
        problems = sorted(new_errors) + ([f"{parse_errors} parse error(s)"] if parse_errors else [])
        raise FstabError(f"refusing to write {path}: findmnt --verify reports " + "; ".join(problems))


def replace(path: Path, text: str, step: Callable[[str], None] = lambda name: None) -> None:
    """Replace `path` with `text`: temporary file, fsync, findmnt --verify, backup of the old file,
    rename, fsync of the folder. The candidate may not bring an error the current file does not have.
    `step` is called after each stage (tests use it to die there)."""
    temporary = path.with_name(f".{path.name}.scipioncloud.tmp")
    backup = path.with_name(f"{path.name}.scipioncloud.bak")
    old = path.read_text() if path.exists() else ""
    like = path.stat() if path.exists() else None
    _write_synced(temporary, text, like)
    step("temporary-written")
    try:
        _refuse_new_errors(path, temporary)
    except FstabError:
        temporary.unlink()
        raise
    step("verified")
    backup_temporary = backup.with_name(f".{backup.name}.tmp")
    _write_synced(backup_temporary, old, like)
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


def check_editable(path: Path) -> None:
    """Raise FstabError when no edit could pass (findmnt reports parse errors in the file as it is)."""
    if path.exists():
        parse_errors, _ = verify(path)
        if parse_errors:
            raise FstabError(
                f"{path} has {parse_errors} line(s) findmnt --verify cannot parse; fix them, then try again"
            )


def check_remove(path: Path, uuid: str) -> None:
    """Raise FstabError if removing the agent's line for `uuid` would be refused; writes nothing lasting."""
    with locked(path):
        text = path.read_text() if path.exists() else ""
        new = without(text, uuid)
        if new == text:
            return
        candidate = path.with_name(f".{path.name}.scipioncloud.check")
        _write_synced(candidate, new, path.stat())
        try:
            _refuse_new_errors(path, candidate)
        finally:
            candidate.unlink()


def remove(path: Path, uuid: str) -> bool:
    """Remove the agent's line for `uuid`; False when there was none."""
    with locked(path):
        text = path.read_text() if path.exists() else ""
        new = without(text, uuid)
        if new == text:
            return False
        replace(path, new)
        return True
