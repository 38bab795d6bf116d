"""Ending the processes tests start: politely first, then for sure, always reaped."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; the process is reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
