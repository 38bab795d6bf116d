"""What the blank proof's zero check costs on a 1 TiB volume: reads, bytes, seconds, on a sparse 1 TiB file
behind a loop device with the page cache dropped, then under a cgroup v1 blkio read limit of 125 MB/s
(EBS gp3's baseline). Reference in the same run: dd reading the same number of bytes from the head in one
sequential stream. Needs root (loop devices, drop_caches, cgroups).

    make bench            # or: .venv/bin/python bench/bench_blank_check.py [--size-gib 1024]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prewarm import BLKIO, EBS_BPS, blkio_limit, drop_caches

from agent.volumes import blank


def device_reads(device: str) -> tuple[int, int]:
    """(read requests completed, bytes read) on the device since it was attached."""
    fields = Path(f"/sys/class/block/{Path(device).name}/stat").read_text().split()
    return int(fields[0]), int(fields[2]) * 512


def measure(device: str, size: int, total: int) -> tuple[float, float, int, int]:
    """(zero-check seconds, dd seconds, device requests, device bytes) with a cold cache."""
    drop_caches()
    before = device_reads(device)
    start = time.perf_counter()
    scan = blank.scan(device, size)
    seconds = time.perf_counter() - start
    after = device_reads(device)
    assert scan.nonzero_at is None and scan.bytes_read == total
    drop_caches()
    start = time.perf_counter()
    subprocess.run(
        ["dd", f"if={device}", "of=/dev/null", "bs=1M", f"count={total // blank.MiB}", "status=none"],
        check=True,
    )
    return seconds, time.perf_counter() - start, after[0] - before[0], after[1] - before[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=int, default=1024)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices, drop_caches)", file=sys.stderr)
        return 2
    size = args.size_gib * 1024**3
    plan = blank.ranges(size)
    total = sum(length for _, length in plan)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
        image = Path(folder) / "volume.img"
        with open(image, "wb") as handle:
            handle.truncate(size)  # sparse: reads as zeros, costs no disk
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        try:
            print(f"blank check on {args.size_gib} GiB: {len(plan)} reads planned, {total / 2**20:.0f} MiB")
            runs = [("unthrottled", None)] + ([("blkio 125 MB/s", EBS_BPS)] if BLKIO.is_dir() else [])
            for label, bps in runs:
                if bps:
                    with blkio_limit(device, bps):
                        check_s, dd_s, requests, read = measure(device, size, total)
                else:
                    check_s, dd_s, requests, read = measure(device, size, total)
                print(
                    f"  {label:15s} zero check {check_s:6.2f} s  dd same bytes {dd_s:6.2f} s  "
                    f"ratio {check_s / dd_s:5.2f}  device requests {requests}  "
                    f"device bytes {read / 2**20:.0f} MiB"
                )
        finally:
            subprocess.run(["losetup", "-d", device], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
