"""Cost figures against hand-computed cases, the transfer allowance, and the price table itself."""

from __future__ import annotations

import json

import pytest

from scipioncloud import costs
from scipioncloud.errors import BadInput

TABLE = costs.load_table()
IRELAND = TABLE.region("eu-west-1")
GUIDE_TIERS = (costs.Tier(None, 0.09),)  # the 2018 guide: first GB free, then $0.09/GB


def test_table_is_dated_sourced_and_complete():
    raw = json.loads(costs.TABLE_PATH.read_text())
    assert raw["as_of"] and raw["currency"] == "USD"
    assert {"instances", "ebs", "s3", "transfer_out", "free_allowance"} <= set(raw["sources"])
    for region in TABLE.regions.values():
        assert {"gp3", "gp2", "io2", "st1", "sc1"} <= set(region.ebs_per_gb_month)
        assert {"standard", "glacier_flexible", "glacier_deep_archive"} <= set(region.s3_per_gb_month)
        assert {"g4dn.xlarge", "g5.xlarge", "p4d.24xlarge"} <= set(region.instances_per_hour)
        assert region.free_gb_per_month == 100  # AWS's rule since December 2021
        assert region.tiers[-1].up_to_gb is None
        assert all(price > 0 for price in region.instances_per_hour.values())


@pytest.mark.parametrize(
    ("gb", "expected"),
    [(0, 0.0), (100, 0.0), (101, 0.09), (150, 4.50), (10_340, 921.60), (10_340 + 1_000, 921.60 + 85.0)],
)
def test_transfer_out_with_current_allowance_and_tiers(gb, expected):
    assert costs.transfer_cost(gb, IRELAND.free_gb_per_month, IRELAND.tiers) == pytest.approx(expected)


@pytest.mark.parametrize(("gb", "expected"), [(0, 0.0), (1, 0.0), (2, 0.09), (10, 0.81), (500, 44.91)])
def test_transfer_out_as_the_guide_taught_first_gb_free(gb, expected):
    assert costs.transfer_cost(gb, 1, GUIDE_TIERS) == pytest.approx(expected)


def test_workstation_month_by_hand():
    # g4dn.xlarge Ireland $0.587/h x 100 h = 58.70; 500 GB gp3 x $0.088 = 44.00;
    # 150 GB out - 100 free = 50 GB x $0.09 = 4.50
    result = costs.estimate(IRELAND, "g4dn.xlarge", hours=100, ebs_gb=500, egress_gb=150)
    assert result["breakdown"] == {"instance": 58.70, "storage": 44.00, "transfer_out": 4.50}
    assert result["total"] == 107.20
    # never stopped: 730 h x 0.587 = 428.51, plus the same disks and transfer
    assert result["if_never_stopped"] == 477.01
    assert result["saved_by_stopping"] == 369.81
    assert result["hours_stopped"] == 630


def test_stopped_instance_costs_only_its_disks():
    result = costs.estimate(IRELAND, "g5.xlarge", hours=0, ebs_gb=1000, ebs_type="gp2", months=2)
    assert result["breakdown"] == {"instance": 0.0, "storage": 220.0, "transfer_out": 0.0}


def test_the_guides_terabyte_of_ebs():
    # "EBS storage costs 0.11$ per GB which makes around 113$ per TB per month" (gp2 in Ireland)
    result = costs.estimate(IRELAND, "g4dn.xlarge", hours=0, ebs_gb=1024, ebs_type="gp2")
    assert result["breakdown"]["storage"] == pytest.approx(112.64)


def test_movies_on_ebs_versus_s3_and_glacier():
    result = costs.estimate(IRELAND, "g4dn.xlarge", hours=10, ebs_gb=0, movies_gb=2000, months=3)
    keep = result["movies"]["keep_on"]
    assert keep["ebs_gp3"] == pytest.approx(2000 * 0.088 * 3)
    assert keep["s3_standard"] == pytest.approx(2000 * 0.023 * 3)
    assert keep["s3_glacier_flexible"] == pytest.approx(2000 * 0.0036 * 3)
    assert (
        keep["s3_glacier_deep_archive"] < keep["s3_glacier_flexible"] < keep["s3_standard"] < keep["ebs_gp3"]
    )


def test_egress_spread_over_months_gets_the_allowance_each_month():
    # 300 GB over 3 months = 100 GB a month, all inside the monthly allowance
    assert (
        costs.estimate(IRELAND, "g4dn.xlarge", hours=0, egress_gb=300, months=3)["breakdown"]["transfer_out"]
        == 0
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hours": 800}, "more than the 730 hours"),
        ({"hours": 1, "ebs_type": "nvme"}, "unknown EBS type"),
        ({"hours": -1}, "cannot be negative"),
        ({"hours": 1, "months": 0}, "must be positive"),
    ],
)
def test_estimate_rejects_impossible_input(kwargs, message):
    with pytest.raises(BadInput, match=message):
        costs.estimate(IRELAND, "g4dn.xlarge", **kwargs)


def test_unknown_type_and_region_are_named():
    with pytest.raises(BadInput, match=r"no price for x9\.huge"):
        costs.estimate(IRELAND, "x9.huge", hours=1)
    with pytest.raises(BadInput, match="no prices for region 'ap-south-2'"):
        TABLE.region("ap-south-2")


def guide_table(tmp_path):
    """The shipped table with the 2018 guide's one free GB instead of AWS's current 100."""
    raw = json.loads(costs.TABLE_PATH.read_text())
    raw["regions"]["eu-west-1"]["transfer_out"] = {
        "free_gb_per_month": 1,
        "tiers": [{"up_to_gb": None, "per_gb": 0.09}],
    }
    path = tmp_path / "guide-prices.json"
    path.write_text(json.dumps(raw))
    return path


def test_cli_estimate_with_a_table_parameter(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from scipioncloud.cli import main

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    runner = CliRunner()
    args = ["cost", "estimate", "--type", "g4dn.xlarge", "--hours", "10", "--egress-gb", "10", "--json"]
    shipped = json.loads(runner.invoke(main, args).stdout)
    assert shipped["breakdown"]["transfer_out"] == 0.0
    guide = json.loads(runner.invoke(main, [*args, "--price-table", str(guide_table(tmp_path))]).stdout)
    assert guide["breakdown"]["transfer_out"] == 0.81
    assert guide["free_transfer_gb_per_month"] == 1
    assert guide["breakdown"]["instance"] == 5.87
    text = runner.invoke(main, args[:-1])
    assert "stopping saves $422.64" in text.stdout  # (730 - 10) h x 0.587


def test_cli_estimate_unknown_region_is_exit_2(monkeypatch):
    from click.testing import CliRunner

    from scipioncloud.cli import main

    result = CliRunner().invoke(
        main, ["cost", "estimate", "--type", "g4dn.xlarge", "--hours", "1", "--region", "xx-1"]
    )
    assert result.exit_code == 2 and "unknown region 'xx-1'" in result.stderr


def test_pricing_api_answer_is_parsed():
    product = {
        "product": {"attributes": {"instanceType": "g4dn.xlarge"}},
        "terms": {
            "OnDemand": {
                "X.Y": {
                    "priceDimensions": {"X.Y.Z": {"unit": "Hrs", "pricePerUnit": {"USD": "0.5870000000"}}}
                }
            }
        },
    }
    assert costs._on_demand_usd([json.dumps(product)]) == 0.587
    assert costs._on_demand_usd([]) is None


@pytest.mark.integration
def test_pricing_api_unavailable_falls_back_or_fails_as_asked(aws_env):
    # the emulator has no Pricing API: `auto` uses the table and says so, `api` fails with the reason
    from click.testing import CliRunner

    from scipioncloud.cli import main

    args = ["cost", "estimate", "--type", "g4dn.xlarge", "--hours", "1", "--json"]
    auto = CliRunner().invoke(main, [*args, "--prices", "auto"])
    assert auto.exit_code == 0
    assert json.loads(auto.stdout)["prices_from"].startswith("table ")
    api = CliRunner().invoke(main, [*args, "--prices", "api"])
    assert api.exit_code == 1 and "Pricing API did not answer" in api.stderr


def test_every_row_of_the_default_table_can_be_priced_by_the_api():
    """`cost refresh` asks the Price List API for each region x instance type and EBS type of the shipped
    table, in order, with the filters of the API's attribute names; the stand-in answers in its shape."""
    from tests.support.price_list import expect_instance, expect_storage, stubbed_client

    client, stub = stubbed_client()
    expected = {}
    for region, row in TABLE.regions.items():
        for n, instance_type in enumerate(sorted(row.instances_per_hour)):
            price = round(row.instances_per_hour[instance_type] * 1.01 + n * 1e-4, 6)
            expect_instance(stub, region, instance_type, price)
            expected[(region, instance_type)] = price
        for ebs_type in sorted(row.ebs_per_gb_month):
            price = round(row.ebs_per_gb_month[ebs_type] * 1.02, 6)
            expect_storage(stub, region, ebs_type, price)
            expected[(region, ebs_type)] = price
    seen = []
    fresh = costs.refresh(client, TABLE, on_row=lambda r, name, usd: seen.append(((r, name), usd)))
    stub.assert_no_pending_responses()
    assert dict(seen) == expected
    assert fresh["as_of"] != json.loads(costs.TABLE_PATH.read_text())["as_of"]
    assert "Price List API" in fresh["sources"]["instances"]
    # the new table loads as a table, and an estimate uses its prices
    assert (
        fresh["regions"]["eu-west-1"]["instances_per_hour"]["g4dn.xlarge"]
        == expected[("eu-west-1", "g4dn.xlarge")]
    )


def test_api_prices_work_in_a_region_the_table_lacks():
    from tests.support.price_list import expect_instance, expect_storage, stubbed_client

    client, stub = stubbed_client()
    expect_instance(stub, "ap-south-2", "g5.xlarge", 1.5)
    expect_storage(stub, "ap-south-2", "gp3", 0.1)
    hourly, per_gb = costs.api_prices(client, "ap-south-2", "g5.xlarge", "gp3")
    prices, note = costs.region_prices(TABLE, "ap-south-2", api_answered=True)
    result = costs.estimate(prices, "g5.xlarge", hours=10, ebs_gb=100, hourly=hourly, ebs_per_gb_month=per_gb)
    assert result["region"] == "ap-south-2"
    assert result["breakdown"]["instance"] == 15.0 and result["breakdown"]["storage"] == 10.0
    assert "us-east-1 row" in note
    with pytest.raises(BadInput, match="no prices for region 'ap-south-2'"):
        costs.region_prices(TABLE, "ap-south-2", api_answered=False)


def test_user_table_from_refresh_is_used_by_default(tmp_path, monkeypatch):
    raw = json.loads(costs.TABLE_PATH.read_text())
    raw["as_of"] = "2026-11-30"
    user = tmp_path / ".config" / "scipioncloud" / "prices.json"
    user.parent.mkdir(parents=True)
    user.write_text(json.dumps(raw))
    monkeypatch.delenv("SCIPIONCLOUD_PRICE_TABLE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert costs.load_table().as_of == "2026-11-30"
    monkeypatch.setenv("SCIPIONCLOUD_PRICE_TABLE", str(costs.TABLE_PATH))
    assert costs.load_table().path == str(costs.TABLE_PATH)


def test_estimate_takes_its_many_numbers_by_keyword_only():
    # eleven positional numbers once made a swapped pair a silent wrong bill
    with pytest.raises(TypeError):
        costs.estimate(IRELAND, "g4dn.xlarge", 100, 500)  # type: ignore[misc]
