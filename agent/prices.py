"""The AWS price table: one file (agent/prices.json, shipped in the wheel) and its one reader, used by the
agent's usage meter and by the operator's cost estimates (scipioncloud/costs.py builds on it). Only the
standard library, so the agent needs nothing of the operator to price its own hours.

Which table: SCIPIONCLOUD_PRICE_TABLE when set, else the one `scipioncloud cost refresh` wrote
(~/.config/scipioncloud/prices.json), else the shipped one."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

TABLE_PATH = Path(str(resources.files("agent") / "prices.json"))
# `scipioncloud cost refresh` writes here; estimates use it when present (SCIPIONCLOUD_PRICE_TABLE wins).
USER_TABLE = Path("~/.config/scipioncloud/prices.json")
TABLE_ENV = "SCIPIONCLOUD_PRICE_TABLE"


class UnknownRegion(LookupError):
    """The table has no row for the region; the message names the regions it has."""


@dataclass(frozen=True)
class Tier:
    up_to_gb: float | None  # cumulative billable GB this tier reaches; None = no upper bound
    per_gb: float


@dataclass(frozen=True)
class RegionPrices:
    region: str
    instances_per_hour: dict[str, float]
    ebs_per_gb_month: dict[str, float]
    snapshot_per_gb_month: float
    s3_per_gb_month: dict[str, float]
    free_gb_per_month: float
    tiers: tuple[Tier, ...]


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    sources: dict[str, str]
    hours_per_month: float
    regions: dict[str, RegionPrices]
    path: str

    def region(self, name: str) -> RegionPrices:
        if name not in self.regions:
            raise UnknownRegion(
                f"no prices for region {name!r} in {self.path} (it has {', '.join(sorted(self.regions))}); "
                "add the region to the table or use --prices api"
            )
        return self.regions[name]


def default_table_path() -> Path:
    chosen = os.environ.get(TABLE_ENV)
    if chosen:
        return Path(chosen)
    user = USER_TABLE.expanduser()
    return user if user.is_file() else TABLE_PATH


def load_table(path: Path | None = None, table_class: type[PriceTable] = PriceTable) -> PriceTable:
    """The table at `path` (default: default_table_path()); raises OSError, ValueError or KeyError when it
    is missing or malformed. `table_class` lets the operator's CLI name an unknown region its own way."""
    path = path or default_table_path()
    data = json.loads(Path(path).read_text())
    regions = {}
    for name, r in data["regions"].items():
        transfer = r["transfer_out"]
        regions[name] = RegionPrices(
            region=name,
            instances_per_hour=r["instances_per_hour"],
            ebs_per_gb_month=r["ebs_per_gb_month"],
            snapshot_per_gb_month=r["snapshot_per_gb_month"],
            s3_per_gb_month=r["s3_per_gb_month"],
            free_gb_per_month=transfer["free_gb_per_month"],
            tiers=tuple(Tier(t["up_to_gb"], t["per_gb"]) for t in transfer["tiers"]),
        )
    return table_class(data["as_of"], data["sources"], data["hours_per_month"], regions, str(path))
