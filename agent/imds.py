"""The one client of EC2's instance metadata service (IMDSv2) on the instance: a session token by PUT, then
GETs that carry it. Every user of IMDS in the agent goes through here, at the address of `host.imds_url`.

Off EC2 nothing answers: every call raises ImdsUnavailable (an OSError) after `timeout_s`, and the callers
treat that as "not on EC2". At boot the network may come up after the caller starts: `wait_for` retries,
with backoff, for a bounded time, and `on_ec2` says whether waiting makes sense at all. Only the standard
library: the first-boot commands use it too."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_URL = "http://169.254.169.254"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name, not a secret


# Environment override of the EC2 detection ("1" or "0"): tests, and machines whose firmware hides it.
ON_EC2_ENV = "SCIPIONCLOUD_ON_EC2"
T = TypeVar("T")


class ImdsUnavailable(OSError):
    """IMDS did not answer (off EC2, or hop limit, or timeout); the message says where and why."""


def on_ec2(sys_root: Path = Path("/sys")) -> bool:
    """Whether this machine is an EC2 instance, from what the hypervisor tells the kernel (no network):
    Xen instances have a /sys/hypervisor/uuid starting with "ec2", Nitro ones the DMI vendor "Amazon EC2"
    (AWS's "Identify EC2 instances" guide; clock-bound's and systemd-detect-virt's checks are the same)."""
    forced = os.environ.get(ON_EC2_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    for path, wanted in (("hypervisor/uuid", "ec2"), ("class/dmi/id/sys_vendor", "amazon ec2")):
        try:
            if (sys_root / path).read_text().strip().lower().startswith(wanted):
                return True
        except OSError:
            continue
    return False


class ImdsClient:
    def __init__(self, base_url: str = DEFAULT_URL, timeout_s: float = 2.0, token_ttl_s: int = 60) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"host.imds_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.token_ttl_s = token_ttl_s
        # IMDS is link-local: never send it through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(self.base_url + path, method=method, headers=headers)  # noqa: S310 - scheme checked
        with self._opener.open(request, timeout=self.timeout_s) as response:
            return response.read()

    def token(self) -> str:
        try:
            return self._call("PUT", "/latest/api/token", {TTL_HEADER: str(self.token_ttl_s)}).decode()
        except OSError as exc:  # URLError and timeouts are OSErrors
            raise ImdsUnavailable(f"IMDSv2 at {self.base_url} did not answer: {exc}") from None

    def get(self, path: str, token: str | None = None) -> bytes | None:
        """The body at `path` (e.g. "/latest/user-data"); None when IMDS answers 404 (no such item)."""
        token = token or self.token()
        try:
            return self._call("GET", path, {TOKEN_HEADER: token})
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ImdsUnavailable(f"IMDSv2 at {self.base_url}{path}: HTTP {exc.code}") from None
        except OSError as exc:
            raise ImdsUnavailable(f"IMDSv2 at {self.base_url}{path} did not answer: {exc}") from None

    def identity_document(self) -> dict[str, Any]:
        raw = self.get("/latest/dynamic/instance-identity/document")
        if raw is None:
            raise ImdsUnavailable(f"IMDSv2 at {self.base_url} has no instance identity document")
        try:
            return json.loads(raw)
        except ValueError as exc:
            problem = f"identity document is not JSON: {exc}"
            raise ImdsUnavailable(f"IMDSv2 at {self.base_url}: {problem}") from None

    def user_data(self) -> bytes | None:
        """The instance's user data; None when it was launched without any."""
        return self.get("/latest/user-data")

    def meta_data(self, keys: list[str]) -> dict[str, str]:
        """The named meta-data items that exist and are not empty (one token for all)."""
        token = self.token()
        found = {}
        for key in keys:
            try:
                value = self.get(f"/latest/meta-data/{key}", token)
            except ImdsUnavailable:
                continue
            if value and value.strip():
                found[key] = value.decode().strip()
        return found


def wait_for(
    ask: Callable[[ImdsClient], T],
    client: ImdsClient,
    within_s: float,
    *,
    first_delay_s: float = 0.5,
    max_delay_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`ask(client)` (a token, then the data), retried with doubling pauses until it answers or `within_s`
    has passed: at boot the network may come up after the caller starts. Each try is cut to the time left,
    so the whole wait stays bounded. Raises ImdsUnavailable naming the address, the time, the last error."""
    deadline = clock() + within_s
    delay, tries = first_delay_s, 0
    while True:
        tries += 1
        left = deadline - clock()
        try:
            return ask(_bounded(client, left))
        except ImdsUnavailable as exc:
            last = exc
        left = deadline - clock()
        if left <= 0:
            raise ImdsUnavailable(
                f"the instance metadata service at {client.base_url} did not answer within {within_s:g} s"
                f" ({tries} tries; last: {last})"
            ) from None
        sleep(min(delay, left))
        delay = min(delay * 2, max_delay_s)


def _bounded(client: ImdsClient, left_s: float) -> ImdsClient:
    """The client, or a copy whose calls time out within what is left of a wait."""
    if left_s >= client.timeout_s:
        return client
    return ImdsClient(client.base_url, timeout_s=max(left_s, 0.1), token_ttl_s=client.token_ttl_s)
