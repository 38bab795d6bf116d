"""Pre-warm of the used blocks only (agent.prewarm_ranges) against a full read (the agent's own full job,
fio underneath) on a 25 %-full ext4 volume: a loop device on a file of real data, read with O_DIRECT,
page cache dropped before each run, under a cgroup v1 blkio read limit of 125 MB/s (EBS gp3's baseline)
when the machine has one. The device's checksum is compared before and after. Goal: >= 3x. Needs root.

    make bench            # or: .venv/bin/python bench/bench_prewarm_used.py [--size-mb 2048] [--pairs 1]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prewarm import BLKIO, EBS_BPS, blkio_limit, drop_caches

from agent.config import StorageConfig
from agent.volumes import blockdev, prewarm, prewarm_ranges


def digest(device: str) -> str:
    subprocess.run(["blockdev", "--flushbufs", device], check=True)  # read the disk, not stale cache
    h = hashlib.sha256()
    with open(device, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def attach(folder: Path, size_mb: int) -> str:
    """A loop device (O_DIRECT) on a file of real, written data (a sparse file would be read from nowhere);
    one random MiB repeated: mkfs and the files overwrite what matters, and it is written 10x faster."""
    image = folder / "vol.img"
    block = os.urandom(1 << 20)
    with open(image, "wb") as handle:
        for _ in range(size_mb):
            handle.write(block)
    return subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def run(storage: StorageConfig, device: str) -> tuple[float, int]:
    found = blockdev.find(storage, device)
    manager = prewarm.PrewarmManager(storage, aws_status=lambda volume_id: None)
    drop_caches()
    start = time.perf_counter()
    job = manager.start_job(found, force=True)
    job.thread.join()
    if job.state != "done":
        raise RuntimeError(f"job ended {job.state}: {job.error}")
    return time.perf_counter() - start, job.done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--pairs", type=int, default=1)
    args = parser.parse_args()
    missing = [t for t in ("fio", "losetup", "mkfs.ext4", "dumpe2fs") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(
            f"bench_prewarm_used: needs root and {', '.join(missing) or 'fio'}; cannot run", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-prewarm-used-", dir="/var/tmp") as folder:
        device = attach(Path(folder), args.size_mb)
        mnt = Path(folder) / "mnt"
        mnt.mkdir()
        try:
            subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True)
            subprocess.run(["mount", device, str(mnt)], check=True)
            for i in range(4):  # 25 % full, movie-sized files
                with open(mnt / f"movie{i}.tif", "wb") as f:
                    for _ in range(args.size_mb // 16):
                        f.write(os.urandom(1 << 16) * 16)
            subprocess.run(["umount", str(mnt)], check=True)
            size = int(subprocess.run(["blockdev", "--getsize64", device], capture_output=True, text=True,
                                      check=True).stdout)  # fmt: skip
            used = sum(n for _o, n in prewarm_ranges.used_ranges(device, size) or [])
            storage = StorageConfig(
                state_dir=Path(folder) / "state", include_loop=True, mount_roots=(folder,)
            )
            before = digest(device)
            limit = blkio_limit(device, EBS_BPS) if BLKIO.is_dir() else contextlib.nullcontext()
            where = "125 MB/s blkio limit" if BLKIO.is_dir() else "no blkio cgroup: unthrottled"
            ratios = []
            with limit:
                for index in range(args.pairs):
                    full_s, full_b = run(dataclasses.replace(storage, prewarm_used_only=False), device)
                    used_s, used_b = run(dataclasses.replace(storage, prewarm_used_only=True), device)
                    ratios.append(full_s / used_s)
                    print(
                        f"  pair {index + 1} ({where}): full read {full_b / 1e6:.0f} MB in {full_s:.2f} s, "
                        f"used blocks {used_b / 1e6:.0f} MB in {used_s:.2f} s: {ratios[-1]:.2f}x faster"
                    )
            unchanged = digest(device) == before
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
            subprocess.run(["losetup", "-d", device], capture_output=True)
    ratio = sorted(ratios)[len(ratios) // 2]
    print(
        f"bench_prewarm_used: {size / 1e6:.0f} MB volume, {used / size:.0%} of it used; used-only pre-warm "
        f"{ratio:.2f}x faster than a full read (goal >= 3x); device unchanged: {unchanged}"
    )
    return 0 if unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
