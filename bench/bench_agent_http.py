"""Agent HTTP benchmark: the agent's /metrics and /v1/gpus against Debian's prometheus-node-exporter /metrics,
same machine, same run, 20 concurrent connections (wrk). Prints p50/p99 latency, requests per second,
the agent's resident memory and idle CPU, and the ratios agent / node_exporter.

Targets: agent p99 no worse than node_exporter's, RSS under 60 MB, idle CPU under 1 % of a core.
Exits non-zero only when it cannot run (missing wrk or node_exporter, agent does not start).
Run: `make bench` or `.venv/bin/python bench/bench_agent_http.py [--duration 10]`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent
CONNECTIONS = 20
NODE_EXPORTER = "prometheus-node-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, headers: dict[str, str], process: subprocess.Popen, what: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode} before answering")
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not answer on {url} within 30 s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(output: str) -> dict[str, float]:
    """wrk --latency output -> p50/p99 seconds, requests/s, error counts."""

    def seconds(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
        return float(number) * UNITS[unit]

    percentiles = dict(re.findall(r"^[ \t]*(\d+)%[ \t]+([\d.]+(?:us|ms|s|m))[ \t]*$", output, re.M))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if "50" not in percentiles or "99" not in percentiles or rps is None:
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "p50": seconds(percentiles["50"]),
        "p99": seconds(percentiles["99"]),
        "rps": float(rps.group(1)),
        "bad": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


def header_script(folder: Path, token: str) -> Path:
    """A wrk Lua script (mode 0600) that sends the token: on wrk's command line, every user could read it."""
    path = folder / "auth.lua"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as script:
        script.write(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    return path


def load(url: str, script: Path | None, duration: int) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if script:
        command += ["-s", str(script)]
    subprocess.run([*command[:3], "-d2s", *command[4:], url], capture_output=True, check=True)  # warm-up
    result = subprocess.run([*command, url], capture_output=True, text=True, check=True)
    return parse_wrk(result.stdout)


def idle_cpu(pid: int, seconds: float) -> float:
    """Share of one core the process used over `seconds` while nobody talks to it."""
    process = psutil.Process(pid)
    before, started = process.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = process.cpu_times(), time.monotonic() - started
    return ((after.user - before.user) + (after.system - before.system)) / elapsed


def peak_rss(pid: int) -> int:
    """VmHWM: the highest resident set size the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return psutil.Process(pid).memory_info().rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per target")
    parser.add_argument(
        "--idle-seconds", type=float, default=10, help="seconds over which idle CPU is measured"
    )
    args = parser.parse_args()
    for tool in ("wrk", NODE_EXPORTER):
        if shutil.which(tool) is None:
            print(f"cannot run: {tool} is missing; `make deps` installs it", file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp_name:
        tmp = Path(tmp_name)
        port, node_port = free_port(), free_port()
        for sub in ("state", "mnt"):
            (tmp / sub).mkdir()
        (tmp / "fstab").touch()
        config = tmp / "agent.toml"
        config.write_text(
            f'[server]\nbind = "127.0.0.1:{port}"\ntoken_file = "{tmp}/agent.token"\n'
            f'[storage]\nstate_dir = "{tmp}/state"\nfstab = "{tmp}/fstab"\nmount_roots = ["{tmp}/mnt"]\n'
            "prewarm_auto = false\n"
            '[host]\nimds_url = "http://127.0.0.1:9"\n'  # off EC2: nothing listens there
        )
        log = (tmp / "agent.log").open("w")
        agent = subprocess.Popen(
            [str(VENV_BIN / "scipioncloud-agent"), "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        node = None
        try:
            wait_for(f"http://127.0.0.1:{port}/healthz", {}, agent, "the agent")
            auth = header_script(tmp, (tmp / "agent.token").read_text().strip())
            time.sleep(2)  # let start-up work (imports, first samples) settle
            cpu = idle_cpu(agent.pid, args.idle_seconds)
            rss_idle = psutil.Process(agent.pid).memory_info().rss

            node = subprocess.Popen(
                [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{node_port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(f"http://127.0.0.1:{node_port}/metrics", {}, node, "node_exporter")

            results = {
                "agent /metrics": load(f"http://127.0.0.1:{port}/metrics", auth, args.duration),
                "agent /v1/gpus": load(f"http://127.0.0.1:{port}/v1/gpus", auth, args.duration),
                "node_exporter /metrics": load(f"http://127.0.0.1:{node_port}/metrics", None, args.duration),
            }
            rss_peak = peak_rss(agent.pid)
            node_rss = psutil.Process(node.pid).memory_info().rss
        finally:
            if node is not None:
                stop(node)
            stop(agent)
            log.close()

    cores = psutil.cpu_count()
    print(f"{CONNECTIONS} concurrent connections (wrk -t2), {args.duration} s per target, {cores} cores")
    print(f"{'target':<24} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>10} {'errors':>7}")
    for name, r in results.items():
        errors = int(r["bad"] + r["socket_errors"])
        print(f"{name:<24} {r['p50'] * 1e3:>9.2f} {r['p99'] * 1e3:>9.2f} {r['rps']:>10.1f} {errors:>7}")
    reference = results["node_exporter /metrics"]
    print("ratios agent / node_exporter (latency: lower is better; req/s: higher is better)")
    for name in ("agent /metrics", "agent /v1/gpus"):
        r = results[name]
        print(
            f"  {name:<22} p50 {r['p50'] / reference['p50']:.2f}  p99 {r['p99'] / reference['p99']:.2f}  "
            f"req/s {r['rps'] / reference['rps']:.2f}"
        )
    print(
        f"agent RSS: {rss_idle / 2**20:.1f} MiB idle, {rss_peak / 2**20:.1f} MiB peak under load "
        f"(node_exporter {node_rss / 2**20:.1f} MiB)"
    )
    print(f"agent idle CPU: {cpu * 100:.2f} % of one core over {args.idle_seconds:g} s")
    verdicts = {
        "p99 /metrics <= node_exporter": results["agent /metrics"]["p99"] <= reference["p99"],
        "p99 /v1/gpus <= node_exporter": results["agent /v1/gpus"]["p99"] <= reference["p99"],
        "RSS < 60 MB": rss_peak < 60e6,
        "idle CPU < 1 % of a core": cpu < 0.01,
        "no errors": all(r["bad"] + r["socket_errors"] == 0 for r in results.values()),
    }
    for name, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
