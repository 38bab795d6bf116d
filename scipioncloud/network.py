"""The operator's own public address, so the security group opens ports to that address only."""

from __future__ import annotations

import ipaddress
import os
import urllib.request

from scipioncloud.errors import BadInput

DEFAULT_CHECKIP_URL = "https://checkip.amazonaws.com"


def normalize_cidr(cidr: str) -> str:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise BadInput(f"--cidr {cidr!r} is not an address block like 203.0.113.7/32") from None
    if network.version != 4:
        raise BadInput(f"--cidr {cidr!r}: only IPv4 blocks are supported")
    if network.prefixlen == 0:
        raise BadInput(
            "--cidr 0.0.0.0/0 would open SSH and the desktop to the whole internet; name your network"
        )
    return str(network)


def caller_cidr(url: str | None = None, timeout_s: float = 3.0) -> str:
    """'<public address>/32' as seen by a check-IP service (SCIPIONCLOUD_CHECKIP_URL overrides the URL)."""
    url = url or os.environ.get("SCIPIONCLOUD_CHECKIP_URL", DEFAULT_CHECKIP_URL)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - URL is https or configured
            text = response.read(64).decode("ascii", "replace").strip()
        address = ipaddress.ip_address(text)
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"could not learn your public address from {url} ({exc}); pass --cidr YOUR.ADDRESS/32"
        ) from None
    return f"{address}/32"
