"""What keeping movies in S3 costs: retrieval (time and money) of a restore, and the monthly saving of
archiving from EBS to an S3 storage class. Prices from s3-prices.json beside this module. (The egress of a
pull to a lab's machine is the CLI's: scipioncloud.egress, with the CLI's transfer-out table.)"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from agent.s3.errors import BadRequest

TABLE = Path(str(resources.files("agent.s3") / "s3-prices.json"))
GB = 1e9  # AWS bills decimal GB


def table() -> dict:
    return json.loads(TABLE.read_text())


def retrieval_quote(objects: list[dict[str, Any]], tier: str | None = None) -> dict:
    """Time and cost of getting `objects` ([{"size", "storage_class"}]) back. Glacier Flexible Retrieval and
    Deep Archive need a restore first (tier Expedited/Standard/Bulk; Deep Archive has no Expedited)."""
    t = table()
    by_class: dict[str, dict[str, float]] = {}
    for obj in objects:
        entry = by_class.setdefault(obj["storage_class"] or "STANDARD", {"bytes": 0, "count": 0})
        entry["bytes"] += obj["size"]
        entry["count"] += 1
    lines, total, hours = [], 0.0, 0.0
    for storage_class, entry in sorted(by_class.items()):
        options = t["retrieval"].get(storage_class)
        if options is None:
            raise BadRequest(f"no retrieval prices for storage class {storage_class}")
        if "direct" in options:
            chosen, option = "direct", options["direct"]
        else:
            chosen = tier or "Standard"
            if chosen not in options:
                raise BadRequest(f"{storage_class} has no {chosen} retrieval; one of {', '.join(options)}")
            option = options[chosen]
        usd = entry["bytes"] / GB * option["per_gb"] + entry["count"] / 1000 * option["per_1000"]
        total += usd
        hours = max(hours, option["hours"][1])
        lines.append(
            {
                "storage_class": storage_class,
                "tier": chosen,
                "objects": int(entry["count"]),
                "gb": round(entry["bytes"] / GB, 3),
                "usd": round(usd, 2),
                "hours": option["hours"],
                "restore_needed": chosen != "direct",
            }
        )
    return {"lines": lines, "usd": round(total, 2), "hours_at_most": hours, "as_of": t["as_of"]}


def monthly_saving(nbytes: int, storage_class: str) -> dict:
    """EBS gp3 per month minus the storage class per month for `nbytes`."""
    t = table()
    if storage_class not in t["storage_per_gb_month"]:
        raise BadRequest(f"unknown storage class {storage_class!r}")
    gb = nbytes / GB
    ebs = gb * t["ebs_gp3_per_gb_month"]
    s3 = gb * t["storage_per_gb_month"][storage_class]
    return {
        "gb": round(gb, 3),
        "ebs_usd_month": round(ebs, 2),
        "s3_usd_month": round(s3, 2),
        "saving_usd_month": round(ebs - s3, 2),
        "minimum_days": t["minimum_days"][storage_class],
    }
