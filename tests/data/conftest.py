"""Fixtures for the movie tests: the session's moto server (S3 on 127.0.0.1), movie-shaped files, and the
CLI run as a real process where a test must kill it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def make_movie(path: Path, size: int, seed: int = 0) -> Path:
    """Incompressible bytes, different per seed (movies are noise-dominated)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        left = size
        i = seed
        while left:
            chunk = block[: min(MiB, left)]
            f.write(bytes([i % 256]) + chunk[1:])
            left -= len(chunk)
            i += 1
    return path


@pytest.fixture
def s3(aws_env):
    return boto3.client("s3")


@pytest.fixture
def cli_env(aws_env, tmp_path) -> dict[str, str]:
    """Environment for `scipioncloud` as a process: moto only, state kept in the test's folder."""
    return {
        **os.environ,
        **aws_env,
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
        "PYTHONPATH": str(REPO),
    }


def run_cli(env: dict, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "scipioncloud.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def cli_json(env: dict, *args: str) -> tuple[int, dict]:
    result = run_cli(env, *args, "--json")
    return result.returncode, json.loads(result.stdout)


def client_for(url: str, env: dict):
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
