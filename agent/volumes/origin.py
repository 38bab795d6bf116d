"""Where an EBS volume came from (DescribeVolumes' SnapshotId): the AWS part of the proof that a device is
blank. A volume restored from a snapshot holds the snapshot's data even where a sample reads zeros (its
blocks arrive on first read), so it is never formatted.

When AWS cannot be asked (no credentials, no ec2:DescribeVolumes right, no answer in time) the answer is
"unknown", and the agent refuses to format unless storage.format_unverified_ebs says otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agent import aws_volumes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    known: bool
    snapshot_id: str | None = None
    why_unknown: str | None = None


def of_volume(volume_id: str, *, client: Any | None = None, timeout: float = 2.0) -> Origin:
    """DescribeVolumes for one volume: its SnapshotId ('' or absent: made empty), or why AWS did not say."""
    try:
        client = client or aws_volumes.ec2_client(timeout)
        if client is None:
            return Origin(False, why_unknown="no AWS credentials or region on this instance")
        volumes = client.describe_volumes(VolumeIds=[volume_id]).get("Volumes") or []
    except Exception as exc:  # AccessDenied, no network, throttled: unknown, never "blank"
        log.info("DescribeVolumes for %s unavailable: %s", volume_id, exc)
        return Origin(False, why_unknown=f"DescribeVolumes failed: {exc}")
    if not volumes:
        return Origin(False, why_unknown=f"DescribeVolumes does not know {volume_id}")
    return Origin(True, snapshot_id=volumes[0].get("SnapshotId") or None)
