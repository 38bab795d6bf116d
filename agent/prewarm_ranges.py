"""Pre-warm only the blocks a filesystem uses. A volume restored from a snapshot is slow on each block's
first read; blocks the filesystem never allocated are never read by anyone, so reading them is wasted time.
On a 25 %-full volume, reading the used blocks only is about 4x less I/O.

Which blocks are free comes from the filesystem's own tools, read-only, on the unmounted or mounted device:
ext2/3/4 from `dumpe2fs` ("Free blocks:" per group, e2fsprogs), xfs from `xfs_db -r -c "freesp -d"` (each
free extent per allocation group) and the superblock's geometry. The used ranges are the complement, rounded
out to 1 MiB (fio's block size, O_DIRECT alignment) and merged across small gaps so fio starts a bounded
number of times. Any other filesystem, or a tool that fails: None, and the caller reads everything.

`run_job` is the pre-warm job's body for used-only reads (hooked from agent.prewarm); its progress counts
bytes of the used ranges, and its checkpoint resumes inside them."""

from __future__ import annotations

import logging
import re
import subprocess
import time

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_RANGES = 256  # merge gaps until at most this many ranges (each one a fio start of ~50 ms)


def fstype(device: str) -> str | None:
    try:
        out = subprocess.run(
            ["blkid", "-p", "-o", "export", device], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^TYPE=(\S+)$", out, re.MULTILINE)
    return match[1] if match else None


def _complement(free: list[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """[(start, end)) used = [0, total) minus the free ranges (same units)."""
    used, cursor = [], 0
    for start, end in sorted(free):
        if start > cursor:
            used.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < total:
        used.append((cursor, total))
    return used


def ext_free(device: str) -> tuple[list[tuple[int, int]], int, int]:
    """(free byte ranges, filesystem bytes, block size) from dumpe2fs."""
    out = subprocess.run(
        ["dumpe2fs", device], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    block = int(re.search(r"^Block size:\s+(\d+)", out, re.MULTILINE)[1])
    count = int(re.search(r"^Block count:\s+(\d+)", out, re.MULTILINE)[1])
    free = []
    for line in re.findall(r"^\s+Free blocks: (.+)$", out, re.MULTILINE):
        for part in line.split(","):
            part = part.strip()
            if not part:
                continue
            first, _, last = part.partition("-")
            free.append((int(first) * block, (int(last or first) + 1) * block))
    return free, count * block, block


def xfs_free(device: str) -> tuple[list[tuple[int, int]], int, int]:
    """(free byte ranges, filesystem bytes, block size) from xfs_db, read-only."""
    geometry = subprocess.run(
        ["xfs_db", "-r", "-c", "sb 0", "-c", "p blocksize agblocks dblocks", device],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    values = dict(re.findall(r"^(\w+) = (\d+)$", geometry, re.MULTILINE))
    block, agblocks, dblocks = int(values["blocksize"]), int(values["agblocks"]), int(values["dblocks"])
    out = subprocess.run(
        ["xfs_db", "-r", "-c", "freesp -d", device], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    free = []
    for agno, agbno, length in re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.MULTILINE):
        start = (int(agno) * agblocks + int(agbno)) * block
        free.append((start, start + int(length) * block))
    return free, dblocks * block, block


def used_ranges(device: str, device_size: int) -> list[tuple[int, int]] | None:
    """[(offset, length)] to read, 1 MiB aligned and merged; None when the filesystem is not known."""
    kind = fstype(device)
    try:
        if kind in ("ext2", "ext3", "ext4"):
            free, fs_bytes, _block = ext_free(device)
        elif kind == "xfs":
            free, fs_bytes, _block = xfs_free(device)
        else:
            return None
    except (OSError, subprocess.SubprocessError, TypeError, KeyError, ValueError) as exc:
        log.warning("pre-warm: could not read the free blocks of %s (%s); reading everything", device, exc)
        return None
    used = _complement(free, fs_bytes)
    if fs_bytes < device_size:  # space past the filesystem's end may hold anything: read it
        used.append((fs_bytes, device_size))
    return merge(used, device_size)


def merge(ranges: list[tuple[int, int]], device_size: int, gap: int = MiB) -> list[tuple[int, int]]:
    """Round [start, end) ranges out to MiB, merge those closer than `gap` (doubling it until at most
    MAX_RANGES remain); returns [(offset, length)]."""
    aligned = sorted((start // MiB * MiB, min(-(-end // MiB) * MiB, device_size)) for start, end in ranges)
    while True:
        merged: list[list[int]] = []
        for start, end in aligned:
            if merged and start - merged[-1][1] <= gap:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        if len(merged) <= MAX_RANGES:
            return [(start, end - start) for start, end in merged if end > start]
        gap *= 2


def run_job(manager, job, ranges: list[tuple[int, int]], read_range, checkpoint_cls) -> None:
    """The job's reads over `ranges` only; job.size becomes the used bytes, job.done counts within them and
    the checkpoint holds that count (its size stays the device's, so a resized volume starts over)."""
    device_size = job.size
    job.size = sum(length for _o, length in ranges)
    job.done = min(job.done, job.size)
    job.reason = f"used blocks only: {job.size} of {device_size} bytes"
    job.state = "running"
    checkpoint = checkpoint_cls(job.identity, device_size, job.done)
    manager.store.save(checkpoint)
    base = 0
    window_start, window_done = time.monotonic(), job.done
    stopping = False
    for offset, length in ranges:
        while base + length > job.done and not stopping:
            if job.cancel.is_set() or job.shutdown.is_set():
                stopping = True
                break
            job.restart.clear()
            job.interrupt.clear()
            skip = max(0, job.done - base) // MiB * MiB
            last_save = time.monotonic()

            def progress(read: int, start: int = base + skip) -> None:
                nonlocal window_start, window_done, last_save
                job.done = start + read
                now = time.monotonic()
                if now - window_start >= 0.5:
                    job.mb_s = (job.done - window_done) / (now - window_start) / 1e6
                    window_start, window_done = now, job.done
                if now - last_save >= 1.0:
                    # reads in flight may finish out of order: resume behind them
                    checkpoint.done = max(start, (job.done - 32 * MiB) // MiB * MiB)
                    manager.store.save(checkpoint)
                    last_save = now

            _read, finished = read_range(
                job.device,
                offset + skip,
                length - skip,
                bs=MiB if (length - skip) % MiB == 0 else job.logical_block_size,
                rate_bytes_s=manager._share(),
                on_progress=progress,
                stop=job.interrupt,
            )
            if finished:
                job.done = checkpoint.done = base + length
                manager.store.save(checkpoint)
            elif job.restart.is_set() or job.cancel.is_set() or job.shutdown.is_set():
                job.done = checkpoint.done = max(base + skip, (job.done - 32 * MiB) // MiB * MiB)
            else:
                raise RuntimeError(f"fio stopped at {job.done} of {job.size} used bytes without an error")
        if stopping:
            break
        base += length
    if job.cancel.is_set():
        job.state, job.reason = "cancelled", "cancelled by request"
        checkpoint.state = "cancelled"
    elif job.shutdown.is_set() or job.done < job.size:
        job.state, job.reason = "stopped", "agent stopping; resumes from the checkpoint on next start"
    else:
        job.state, checkpoint.state, checkpoint.done = "done", "done", job.size
    manager.store.save(checkpoint)
