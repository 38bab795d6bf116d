"""`scipioncloud cost estimate`"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from scipioncloud import costs
from scipioncloud.commands.common import command
from scipioncloud.errors import OperationFailed


@click.group()
def cost() -> None:
    """What a workstation costs: instance, storage, transfer; stopping versus running."""


@command(cost, "estimate")
@click.option("--type", "instance_type", required=True, help="Instance type, e.g. g4dn.xlarge.")
@click.option("--hours", type=float, required=True, help="Hours the instance runs in the period.")
@click.option("--ebs-gb", type=float, default=0, help="EBS storage kept for the whole period, GB.")
@click.option("--ebs-type", default="gp3", show_default=True)
@click.option("--egress-gb", type=float, default=0, help="Data downloaded from AWS in the period, GB.")
@click.option("--movies-gb", type=float, default=0, help="Raw movies to keep: compare EBS, S3 and Glacier.")
@click.option("--months", type=float, default=1, show_default=True, help="Length of the period (730 h each).")
@click.option(
    "--prices",
    "source",
    type=click.Choice(["table", "api", "auto"]),
    default="table",
    show_default=True,
    help="Where prices come from: the shipped table, the AWS Pricing API, or the API when it answers.",
)
@click.option(
    "--price-table",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Another price table in the same format as agent/prices.json.",
)
def estimate(run, instance_type, hours, ebs_gb, ebs_type, egress_gb, movies_gb, months, source, price_table):
    """Estimate a workstation's cost in --region."""
    table = costs.load_table(price_table)
    region = run.aws.region_name
    hourly = per_gb = None
    used = f"table {table.path} ({table.as_of})"
    if source in ("api", "auto"):
        try:
            client = costs.pricing_client(run.aws.session)
            hourly, per_gb = costs.api_prices(client, region, instance_type, ebs_type)
            used = f"AWS Price List API ({dt.date.today().isoformat()})"
        except Exception as exc:  # any failure: no rights, no network, no product
            if source == "api":
                raise OperationFailed(f"the AWS Pricing API did not answer: {exc}") from None
            run.out.info(f"Pricing API unavailable ({type(exc).__name__}); using the shipped table")
    prices, note = costs.region_prices(table, region, api_answered=hourly is not None)
    used += note
    result = costs.estimate(
        prices,
        instance_type,
        hours=hours,
        ebs_gb=ebs_gb,
        ebs_type=ebs_type,
        egress_gb=egress_gb,
        months=months,
        movies_gb=movies_gb,
        hours_per_month=table.hours_per_month,
        hourly=hourly,
        ebs_per_gb_month=per_gb,
    )
    result["prices_from"] = used
    b = result["breakdown"]
    lines = [
        f"{instance_type} in {region}, {months:g} month(s); prices from {used}",
        f"  instance   {hours:g} h x ${result['price_per_hour']}/h             = ${b['instance']:.2f}",
        f"  storage    {ebs_gb:g} GB {ebs_type} x ${result['ebs_per_gb_month']}/GB-month"
        f" = ${b['storage']:.2f}",
        f"  transfer   {egress_gb:g} GB out ({result['free_transfer_gb_per_month']:g} GB/month free)  = "
        f"${b['transfer_out']:.2f}",
        f"  total                                      ${result['total']:.2f}",
        f"  left running all {result['hours_running'] + result['hours_stopped']:g} h: "
        f"${result['if_never_stopped']:.2f} (stopping saves ${result['saved_by_stopping']:.2f}; "
        "a stopped instance costs only its disks)",
    ]
    if "movies" in result:
        lines.append(f"  keeping {movies_gb:g} GB of raw movies for the period:")
        lines += [f"    {where:<24} ${usd:.2f}" for where, usd in result["movies"]["keep_on"].items()]
    run.out.emit(result, text="\n".join(lines))


@command(cost, "refresh")
@click.option(
    "--in", "regions", multiple=True, metavar="REGION", help="Regions to price (default: the table's)."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Where to write the new table (default: {costs.USER_TABLE}, which estimates then use).",
)
def refresh(run, regions, out):
    """Price every instance and EBS type of the table again from the AWS Price List API, dated today."""
    table = costs.load_table()
    client = costs.pricing_client(run.aws.session)
    try:
        with run.out.status("asking the AWS Price List API"):
            fresh = costs.refresh(client, table, list(regions) or None)
    except LookupError as exc:
        raise OperationFailed(str(exc)) from None
    target = (out or costs.USER_TABLE).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(fresh, indent=2) + "\n")
    summary = {"path": str(target), "as_of": fresh["as_of"], "regions": sorted(fresh["regions"])}
    run.out.emit(summary, text=f"prices of {', '.join(summary['regions'])} as of {fresh['as_of']}: {target}")


COMMANDS = [cost]
