"""AWS's own view of a volume's initialization (DescribeVolumeStatus), when the instance has credentials.
Optional by design: no credentials, no region, no answer within the timeout -> None, and the agent reads
the volume itself. Short timeouts and one attempt, so a missing AWS never delays a job by more than that.

botocore's model lists VolumeStatus.Details (where AWS reports `initialization-state`); the newer
`InitializationStatusDetails` block (type default / provisioned-rate, progress, ETA) is read when the
installed botocore knows it, and ignored otherwise."""

from __future__ import annotations

import logging
from typing import Any

from agent.imds import DEFAULT_URL, ImdsClient, ImdsUnavailable

log = logging.getLogger(__name__)


def _imds_region(imds_url: str, timeout: float) -> str | None:
    """The instance's region from IMDSv2, or None off EC2."""
    try:
        return ImdsClient(imds_url, timeout).identity_document().get("region")
    except (ImdsUnavailable, ValueError):
        return None


def ec2_client(timeout: float, imds_url: str = DEFAULT_URL) -> Any | None:
    """A boto3 EC2 client with short timeouts, or None when there are no credentials or no region."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    session = boto3.session.Session()
    if session.get_credentials() is None:
        return None
    region = session.region_name or _imds_region(imds_url, min(timeout, 0.5))
    if not region:
        return None
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})
    return session.client("ec2", region_name=region, config=config)


def initialization_status(
    volume_id: str, *, client: Any | None = None, timeout: float = 2.0, imds_url: str = DEFAULT_URL
) -> dict | None:
    """What AWS says about the volume's initialization, or None when AWS cannot be asked."""
    try:
        client = client or ec2_client(timeout, imds_url)
        if client is None:
            return None
        response = client.describe_volume_status(VolumeIds=[volume_id])
    except Exception as exc:  # any AWS or network failure: report nothing, read the volume ourselves
        log.info("DescribeVolumeStatus for %s unavailable: %s", volume_id, exc)
        return None
    items = response.get("VolumeStatuses") or []
    if not items:
        return None
    item = items[0]
    details = {d.get("Name"): d.get("Status") for d in item.get("VolumeStatus", {}).get("Details", [])}
    init = item.get("InitializationStatusDetails") or {}
    return {
        "source": "DescribeVolumeStatus",
        "status": item.get("VolumeStatus", {}).get("Status"),
        "initialization_state": details.get("initialization-state"),
        "initialization_type": init.get("InitializationType"),
        "progress_pct": init.get("Progress"),
        "eta_s": init.get("EstimatedTimeToCompleteInSeconds"),
    }


def skip_reason(status: dict | None) -> str | None:
    """Why reading the volume is pointless according to AWS, or None to read it."""
    if not status:
        return None
    if status.get("initialization_state") == "completed" or status.get("progress_pct") == 100:
        return "AWS reports the volume already initialized (fast snapshot restore, or not from a snapshot)"
    if status.get("initialization_type") == "provisioned-rate":
        return "AWS initializes this volume itself at a provisioned rate (volume initialization rate)"
    return None
