"""What a pull costs in transfer out, priced by the one price table (agent/prices.json, through
scipioncloud.costs)."""

from __future__ import annotations

from scipioncloud import costs
from scipioncloud.errors import BadInput

GB = 1e9  # AWS bills decimal GB


def egress_estimate(nbytes: int, region: str = "us-east-1", *, same_region_ec2: bool = False) -> dict:
    """Transfer-out cost of pulling `nbytes` to the internet (a lab's machine) in one month, before any other
    egress that month; pulling to an EC2 instance in the bucket's region costs nothing."""
    gb = nbytes / GB
    if same_region_ec2:
        return {"gb": round(gb, 3), "usd": 0.0, "note": "S3 to EC2 in the same region is free"}
    try:
        prices = costs.load_table().region(region)
    except BadInput:
        prices = costs.load_table().region("us-east-1")
    usd = costs.transfer_cost(gb, prices.free_gb_per_month, prices.tiers)
    return {
        "gb": round(gb, 3),
        "usd": round(usd, 2),
        "free_gb_per_month": prices.free_gb_per_month,
        "note": "internet egress; the monthly free allowance is shared with everything else in the account",
    }
