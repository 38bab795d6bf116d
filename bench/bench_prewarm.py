"""Pre-warm throughput: the agent's job (fio driven, progress parsed, checkpoints written) against bare fio
with the same options on the same loop-backed file. Page cache dropped before every run, runs alternating,
median ratio over the pairs; then the same under a cgroup v1 blkio read limit of 125 MB/s (EBS gp3's
baseline). Needs root (loop devices, drop_caches, cgroups); exits non-zero only when it cannot run.

    make bench            # or: .venv/bin/python bench/bench_prewarm.py [--pairs 5] [--size-mb 2048]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import StorageConfig
from agent.volumes import blockdev, prewarm

BLKIO = Path("/sys/fs/cgroup/blkio")
EBS_BPS = 125_000_000  # gp3 baseline throughput, MB/s as AWS counts them


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_fio(device: str, size: int) -> tuple[float, float, float]:
    """Bare fio, the command AWS documents plus --readonly; (seconds, our CPU s, fio CPU s)."""
    argv = prewarm.fio_argv(device, 0, size)
    argv = argv[argv.index("fio") :]  # without the setpriv wrapper the agent adds
    argv = [a for a in argv if not a.startswith("--status-interval")]
    cpu, child = time.process_time(), children_cpu()
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start, time.process_time() - cpu, children_cpu() - child


def run_agent(storage: StorageConfig, device: str) -> tuple[float, float, float]:
    """The agent's pre-warm job, in process as the server runs it; (seconds, agent CPU s, fio CPU s)."""
    found = blockdev.find(storage, device)
    manager = prewarm.PrewarmManager(storage, aws_status=lambda volume_id: None)
    cpu, child = time.process_time(), children_cpu()
    start = time.perf_counter()
    job = manager.start_job(found, force=True)
    job.thread.join()
    elapsed = time.perf_counter() - start
    if job.state != "done" or job.done != found.size:
        raise RuntimeError(f"agent job ended {job.state}: {job.error}")
    return elapsed, time.process_time() - cpu, children_cpu() - child


@contextlib.contextmanager
def blkio_limit(device: str, bps: int):
    """This process (and the fio it starts) in a cgroup of our own with a read limit on `device`."""
    group = BLKIO / f"scipioncloud-bench-{os.getpid()}"
    group.mkdir()
    original = next(
        line.split(":", 2)[2]
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        if ":blkio:" in line
    )
    try:
        rdev = os.stat(device).st_rdev
        (group / "blkio.throttle.read_bps_device").write_text(f"{os.major(rdev)}:{os.minor(rdev)} {bps}\n")
        (group / "cgroup.procs").write_text(str(os.getpid()))
        yield
    finally:
        (BLKIO / original.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
        group.rmdir()


def pairs(
    label: str, count: int, storage: StorageConfig, device: str, size: int
) -> tuple[list[float], float]:
    """Alternating runs (fio first, then the agent first, ...); the ratios and the agent's median CPU s."""
    ratios, cpu = [], []
    for index in range(count):
        order = ("fio", "agent") if index % 2 == 0 else ("agent", "fio")
        result = {}
        for who in order:
            drop_caches()
            result[who] = run_fio(device, size) if who == "fio" else run_agent(storage, device)
        fio_mb_s = size / result["fio"][0] / 1e6
        agent_mb_s = size / result["agent"][0] / 1e6
        ratios.append(agent_mb_s / fio_mb_s)
        cpu.append(result["agent"][1])
        print(
            f"  {label} pair {index + 1}: fio {fio_mb_s:7.1f} MB/s   agent {agent_mb_s:7.1f} MB/s   "
            f"ratio {ratios[-1]:.3f}   agent CPU {result['agent'][1]:.3f} s "
            f"(its fio {result['agent'][2]:.3f} s, bare fio {result['fio'][2]:.3f} s)"
        )
    return ratios, statistics.median(cpu)


def attach(folder: Path, name: str, size_mb: int) -> str:
    """A loop device on a file of real data, reading its file with O_DIRECT (--direct-io=on) as a disk
    would: the runs then measure the disk, not whatever the guest's page cache still holds."""
    image = folder / name
    with open(image, "wb") as handle:  # real data: a sparse file would be read from nowhere
        for _ in range(size_mb):
            handle.write(os.urandom(1024 * 1024))
    return subprocess.run(
        ["losetup", "--find", "--show", "--direct-io=on", str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--size-mb", type=int, default=2048, help="unthrottled runs (long enough to beat noise)"
    )
    parser.add_argument("--throttled-pairs", type=int, default=3)
    parser.add_argument("--throttled-size-mb", type=int, default=256, help="runs under the 125 MB/s limit")
    args = parser.parse_args()
    missing = [tool for tool in ("fio", "losetup", "setpriv") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        print(f"bench_prewarm: needs root and {', '.join(missing) or 'fio'}; cannot run", file=sys.stderr)
        return 2
    devices: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-prewarm-", dir="/var/tmp") as folder:
        storage = dataclasses.replace(StorageConfig(), state_dir=Path(folder) / "state", include_loop=True)
        try:
            devices.append(attach(Path(folder), "volume.img", args.size_mb))
            print(f"bench_prewarm: {args.size_mb} MiB on {devices[0]}, page cache dropped before each run")
            free, free_cpu = pairs("unthrottled", args.pairs, storage, devices[0], args.size_mb * 1024 * 1024)
            throttled: list[float] = []
            if BLKIO.is_dir():
                devices.append(attach(Path(folder), "small.img", args.throttled_size_mb))
                print(f"bench_prewarm: {args.throttled_size_mb} MiB on {devices[1]}, 125 MB/s blkio limit")
                with blkio_limit(devices[1], EBS_BPS):
                    throttled, _ = pairs(
                        "125 MB/s",
                        args.throttled_pairs,
                        storage,
                        devices[1],
                        args.throttled_size_mb * 1024 * 1024,
                    )
            else:
                print("  no cgroup v1 blkio controller here: throttled runs skipped")
        finally:
            for device in devices:
                subprocess.run(["losetup", "-d", device], check=False)
    print(
        f"prewarm/fio throughput ratio, median of {args.pairs} pairs: {statistics.median(free):.3f}"
        f" (target >= 0.95); agent CPU per {args.size_mb} MiB job: {free_cpu:.3f} s"
    )
    if throttled:
        print(
            f"prewarm/fio ratio under a 125 MB/s blkio limit, median of {args.throttled_pairs} pairs: "
            f"{statistics.median(throttled):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
