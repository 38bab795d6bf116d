"""Cost estimates: instance hours, EBS storage per GB-month, transfer out with its free allowance and
tiers, stopping versus running, and where raw movies are cheapest to keep (the original guide's advice,
as numbers). Prices come from the shipped table (agent/prices.json, read by agent/prices.py) or, when
asked, AWS's Pricing API."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import prices
from scipioncloud.errors import BadInput

# The table and its reader are the agent's (agent/prices.py), which prices its own hours with them.
TABLE_PATH = prices.TABLE_PATH
USER_TABLE = prices.USER_TABLE
Tier = prices.Tier
RegionPrices = prices.RegionPrices
default_table_path = prices.default_table_path


@dataclass(frozen=True)
class PriceTable(prices.PriceTable):
    """The agent's table, with an unknown region as the operator's input error (exit status 2)."""

    def region(self, name: str) -> RegionPrices:
        try:
            return super().region(name)
        except prices.UnknownRegion as exc:
            raise BadInput(str(exc)) from None


def load_table(path: Path | None = None) -> PriceTable:
    return prices.load_table(path, table_class=PriceTable)


def transfer_cost(gb: float, free_gb: float, tiers: tuple[Tier, ...]) -> float:
    """One month's transfer out: the free allowance first, then each tier's price on the GB that fall in it
    (tier bounds count billable GB, i.e. after the allowance)."""
    if gb < 0:
        raise BadInput("--egress-gb cannot be negative")
    billable = max(0.0, gb - free_gb)
    cost = 0.0
    floor = 0.0
    for tier in tiers:
        top = billable if tier.up_to_gb is None else min(billable, tier.up_to_gb)
        if top > floor:
            cost += (top - floor) * tier.per_gb
        if tier.up_to_gb is None or billable <= tier.up_to_gb:
            break
        floor = tier.up_to_gb
    return cost


def _money(x: float) -> float:
    return round(x + 1e-12, 2)


def estimate(
    prices: RegionPrices,
    instance_type: str,
    *,
    hours: float,
    ebs_gb: float = 0,
    ebs_type: str = "gp3",
    egress_gb: float = 0,
    months: float = 1.0,
    movies_gb: float = 0,
    hours_per_month: float = 730,
    hourly: float | None = None,
    ebs_per_gb_month: float | None = None,
) -> dict[str, Any]:
    """Costs over `months`: the instance runs `hours` of them and is stopped the rest (stopped instances
    cost only their disks); EBS is billed for the whole period; egress is spread evenly over the months."""
    if months <= 0:
        raise BadInput("--months must be positive")
    if hours < 0 or ebs_gb < 0 or movies_gb < 0:
        raise BadInput("--hours, --ebs-gb and --movies-gb cannot be negative")
    period_h = months * hours_per_month
    if hours > period_h:
        raise BadInput(
            f"--hours {hours:g} is more than the {period_h:g} hours in {months:g} month(s); raise --months"
        )
    if hourly is None:
        if instance_type not in prices.instances_per_hour:
            raise BadInput(
                f"no price for {instance_type} in {prices.region} in the table; known: "
                f"{', '.join(sorted(prices.instances_per_hour))} (or use --prices api)"
            )
        hourly = prices.instances_per_hour[instance_type]
    if ebs_per_gb_month is None:
        if ebs_type not in prices.ebs_per_gb_month:
            raise BadInput(f"unknown EBS type {ebs_type!r}; one of {', '.join(prices.ebs_per_gb_month)}")
        ebs_per_gb_month = prices.ebs_per_gb_month[ebs_type]
    instance = hours * hourly
    storage = ebs_gb * ebs_per_gb_month * months
    per_month_egress = egress_gb / months
    transfer = months * transfer_cost(per_month_egress, prices.free_gb_per_month, prices.tiers)
    total = instance + storage + transfer
    always_on = period_h * hourly + storage + transfer
    result: dict[str, Any] = {
        "region": prices.region,
        "instance_type": instance_type,
        "months": months,
        "hours_running": hours,
        "hours_stopped": period_h - hours,
        "price_per_hour": hourly,
        "ebs_type": ebs_type,
        "ebs_per_gb_month": ebs_per_gb_month,
        "free_transfer_gb_per_month": prices.free_gb_per_month,
        "breakdown": {
            "instance": _money(instance),
            "storage": _money(storage),
            "transfer_out": _money(transfer),
        },
        "total": _money(total),
        "if_never_stopped": _money(always_on),
        "saved_by_stopping": _money(always_on - total),
    }
    if movies_gb:
        per_month = {
            "ebs_" + ebs_type: ebs_per_gb_month,
            **{f"s3_{k}": v for k, v in prices.s3_per_gb_month.items()},
        }
        result["movies"] = {
            "gb": movies_gb,
            "keep_on": {where: _money(movies_gb * price * months) for where, price in per_month.items()},
        }
    return result


# --- AWS Pricing API (optional; needs pricing:GetProducts) ---------------------------------------------


def _on_demand_usd(price_list: list[str]) -> float | None:
    for item in price_list:
        product = json.loads(item)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = float(dimension.get("pricePerUnit", {}).get("USD", "0"))
                if usd > 0:
                    return usd
    return None


def pricing_client(session):
    from botocore.config import Config

    return session.client(
        "pricing",
        region_name="us-east-1",  # the Price List API's own endpoint region
        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=5),
    )


def _term(field: str, value: str) -> dict:
    return {"Type": "TERM_MATCH", "Field": field, "Value": value}


def instance_filters(region: str, instance_type: str) -> list[dict]:
    """Linux, shared tenancy, no pre-installed software, on-demand capacity: the list price."""
    return [
        _term("instanceType", instance_type),
        _term("regionCode", region),
        _term("operatingSystem", "Linux"),
        _term("tenancy", "Shared"),
        _term("preInstalledSw", "NA"),
        _term("capacitystatus", "Used"),
    ]


def storage_filters(region: str, ebs_type: str) -> list[dict]:
    return [_term("productFamily", "Storage"), _term("volumeApiName", ebs_type), _term("regionCode", region)]


def _ask(client, filters: list[dict]) -> float | None:
    answer = client.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=10)
    return _on_demand_usd(answer["PriceList"])


def api_prices(client, region: str, instance_type: str, ebs_type: str) -> tuple[float, float]:
    """(USD per hour, USD per GB-month) from the Price List API; raises on any failure (callers fall
    back or report it)."""
    hourly = _ask(client, instance_filters(region, instance_type))
    storage = _ask(client, storage_filters(region, ebs_type))
    if hourly is None or storage is None:
        raise LookupError(f"the Pricing API has no price for {instance_type}/{ebs_type} in {region}")
    return hourly, storage


def region_prices(table: PriceTable, region: str, *, api_answered: bool) -> tuple[RegionPrices, str]:
    """The table's row for `region`. When the region has no row but the API gave the instance and EBS
    prices, the other figures (transfer tiers, S3) come from the us-east-1 row, and the note says so."""
    if region in table.regions or not api_answered:
        return table.region(region), ""
    fallback = table.regions.get("us-east-1") or next(iter(table.regions.values()))
    return dataclasses.replace(fallback, region=region), (
        f"; transfer and S3 prices from the table's {fallback.region} row (no row for {region})"
    )


def refresh(client, table: PriceTable, regions: list[str] | None = None, on_row=None) -> dict[str, Any]:
    """A new table: every instance type and EBS type of the given table, priced again from the Price List
    API for each region (the table's regions by default); other figures are kept. Raises on the first
    price the API cannot give, so a half-refreshed table is never written."""
    raw = json.loads(Path(table.path).read_text())
    template = raw["regions"].get("us-east-1") or next(iter(raw["regions"].values()))
    for region in regions or list(raw["regions"]):
        row = raw["regions"].setdefault(region, json.loads(json.dumps(template)))
        for instance_type in sorted(row["instances_per_hour"]):
            price = _ask(client, instance_filters(region, instance_type))
            if price is None:
                raise LookupError(
                    f"the Price List API has no Linux on-demand price for {instance_type} in {region}"
                )
            row["instances_per_hour"][instance_type] = price
            if on_row:
                on_row(region, instance_type, price)
        for ebs_type in sorted(row["ebs_per_gb_month"]):
            price = _ask(client, storage_filters(region, ebs_type))
            if price is None:
                raise LookupError(f"the Price List API has no price for EBS {ebs_type} in {region}")
            row["ebs_per_gb_month"][ebs_type] = price
            if on_row:
                on_row(region, ebs_type, price)
    today = dt.date.today().isoformat()
    raw["as_of"] = today
    raw["sources"]["instances"] = raw["sources"]["ebs"] = f"AWS Price List API (pricing:GetProducts), {today}"
    return raw
