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

from agent.volumes import prewarm

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_RANGES = 64  # merge gaps until at most this many ranges (each one a fio job, all run in parallel)


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
    out = subprocess.run(["dumpe2fs", device], capture_output=True, text=True, timeout=120, check=True).stdout
    block = int(re.search(r"^Block size:\s+(\d+)", out, re.MULTILINE)[1])
    count = int(re.search(r"^Block count:\s+(\d+)", out, re.MULTILINE)[1])
    free = unused_inode_tables(out, block)
    for line in re.findall(r"^\s+Free blocks: (.+)$", out, re.MULTILINE):
        for part in line.split(","):
            part = part.strip()
            if not part:
                continue
            first, _, last = part.partition("-")
            free.append((int(first) * block, (int(last or first) + 1) * block))
    return free, count * block, block


def unused_inode_tables(dumpe2fs: str, block: int) -> list[tuple[int, int]]:
    """Byte ranges of inode tables past each group's last used inode ("N unused inodes", ext4's
    bg_itable_unused): the kernel never reads them (uninit_bg / metadata_csum), and they are most of the
    metadata on a fresh volume."""
    inode_size = int(re.search(r"^Inode size:\s+(\d+)", dumpe2fs, re.MULTILINE)[1])
    per_group = int(re.search(r"^Inodes per group:\s+(\d+)", dumpe2fs, re.MULTILINE)[1])
    free = []
    for group in re.split(r"^Group \d+:", dumpe2fs, flags=re.MULTILINE)[1:]:
        table = re.search(r"Inode table at (\d+)-(\d+)", group)
        unused = re.search(r"(\d+) unused inodes", group)
        if not table or not unused:
            continue
        first, last = int(table[1]), int(table[2])
        used_inodes = per_group - int(unused[1])
        used_blocks = -(-used_inodes * inode_size // block)
        if first + used_blocks <= last:
            free.append(((first + used_blocks) * block, (last + 1) * block))
    return free


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


def fio_ranges_argv(
    path: str, ranges: list[tuple[int, int]], *, bs: int, rate_bytes_s: int | None
) -> list[str]:
    """One fio process for every range: options before the first --name are global; each range is a job
    of its own and they run in parallel, sharing the queue depth (fio's jobs run one after the other with
    --stonewall cost ~0.25 s each here; in parallel the start is paid once). The rate limit is split too."""
    depth = max(2, prewarm.IODEPTH // max(1, len(ranges)))
    share = int(rate_bytes_s / len(ranges)) if rate_bytes_s else None
    argv = prewarm.fio_argv(path, 0, 1, bs=bs, rate_bytes_s=max(share, 4096) if share else None)
    fio = argv.index("fio")
    options = [
        a for a in argv[fio + 1 :] if not a.startswith(("--name=", "--offset=", "--size=", "--iodepth="))
    ]
    options.append(f"--iodepth={depth}")
    jobs: list[str] = []
    for index, (offset, length) in enumerate(ranges):
        jobs += [f"--name=r{index}", f"--offset={offset}", f"--size={length}"]
    return [*argv[: fio + 1], *options, *jobs]


def read_ranges(path, ranges, *, bs, rate_bytes_s, on_progress, stop) -> tuple[int, bool]:
    """Read every range with one fio; (bytes read, finished). Same contract as prewarm.read_range."""
    total = sum(length for _o, length in ranges)

    def status(document: dict) -> None:
        per_job = {j.get("jobname"): j.get("read", {}).get("io_bytes", 0) for j in document.get("jobs", [])}
        read = [per_job.get(f"r{i}", 0) for i in range(len(ranges))]
        on_progress(prewarm.read_bytes(document), safe_prefix(ranges, read))

    return prewarm.run_fio(
        fio_ranges_argv(path, ranges, bs=bs, rate_bytes_s=rate_bytes_s), total, status, stop
    )


def safe_prefix(ranges: list[tuple[int, int]], read: list[int]) -> int:
    """Bytes of the ranges, in order, known read: whole ranges done, then the first unfinished one's
    progress less what may still be in flight. A checkpoint at this count never skips an unread block."""
    done = 0
    for (_offset, length), got in zip(ranges, read, strict=True):
        if got >= length:
            done += length
            continue
        return done + max(0, (got - 32 * MiB) // MiB * MiB)
    return done


def remaining(ranges: list[tuple[int, int]], done: int) -> list[tuple[int, int]]:
    """The ranges left after `done` bytes of them were read (a partly read one starts at its MiB)."""
    left, base = [], 0
    for offset, length in ranges:
        if base + length > done:
            skip = max(0, done - base) // MiB * MiB
            left.append((offset + skip, length - skip))
        base += length
    return left


def run_job(manager, job, ranges: list[tuple[int, int]], checkpoint_cls) -> None:
    """The job's reads over `ranges` only; job.size becomes the used bytes, job.done counts within them and
    the checkpoint holds that count (its size stays the device's, so a resized volume starts over)."""
    device_size = job.size
    job.size = sum(length for _o, length in ranges)
    job.done = min(job.done, job.size)
    job.reason = f"used blocks only: {job.size} of {device_size} bytes"
    job.state = "running"
    checkpoint = checkpoint_cls(job.identity, device_size, job.done, mode="used")
    manager.store.save(checkpoint)
    job.start_rate_window()
    while job.done < job.size and not (job.cancel.is_set() or job.shutdown.is_set()):
        job.restart.clear()
        job.interrupt.clear()
        left = remaining(ranges, job.done)
        start = job.size - sum(length for _o, length in left)
        last_save = time.monotonic()

        safe = [start]

        def progress(read: int, prefix: int, start: int = start, safe: list[int] = safe) -> None:
            nonlocal last_save
            now = time.monotonic()
            job.advance(start + read, now)
            if now - last_save >= 1.0:
                checkpoint.done = start + prefix  # ranges run in parallel: only the completed prefix
                manager.store.save(checkpoint)
                last_save = now
            safe[0] = start + prefix

        aligned = all(o % MiB == 0 and n % MiB == 0 for o, n in left)
        _read, finished = read_ranges(
            job.device,
            left,
            bs=MiB if aligned else job.logical_block_size,
            rate_bytes_s=manager._share(),
            on_progress=progress,
            stop=job.interrupt,
        )
        if finished:
            job.done = job.size
        elif job.restart.is_set() or job.cancel.is_set() or job.shutdown.is_set():
            job.done = safe[0]
        else:
            raise prewarm.FioError(f"fio stopped at {job.done} of {job.size} used bytes without an error")
        checkpoint.done = job.done
        manager.store.save(checkpoint)
    if job.cancel.is_set():
        job.state, job.reason = "cancelled", "cancelled by request"
        checkpoint.state = "cancelled"
    elif job.done < job.size:
        job.state, job.reason = "stopped", "agent stopping; resumes from the checkpoint on next start"
    else:
        job.state, checkpoint.state, checkpoint.done = "done", "done", job.size
    manager.store.save(checkpoint)
