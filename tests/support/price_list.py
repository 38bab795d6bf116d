"""Stand-in for the AWS Price List API (pricing:GetProducts), which no emulator here serves: a botocore
Stubber on a real `pricing` client answers with PriceList items in the API's documented shape (a JSON
string per product: product.attributes, terms.OnDemand.<offer>.priceDimensions.<rate>.pricePerUnit.USD;
see docs/fidelity.md). The Stubber checks each request against botocore's pricing service model and
against the filters the caller must send, so a wrong attribute name or region code fails the test."""

from __future__ import annotations

import json

import boto3
from botocore.stub import Stubber

from scipioncloud import costs


def product_item(attributes: dict[str, str], usd: float, unit: str) -> str:
    sku = "TESTSKU0000000001"
    return json.dumps(
        {
            "product": {
                "productFamily": attributes.get("productFamily", "Compute Instance"),
                "attributes": attributes,
                "sku": sku,
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "offerTermCode": "JRTCKXETXF",
                        "sku": sku,
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": unit,
                                "pricePerUnit": {"USD": f"{usd:.10f}"},
                                "description": "stand-in",
                            }
                        },
                    }
                }
            },
            "version": "20261101000000",
            "publicationDate": "2026-11-01T00:00:00Z",
        }
    )


def stubbed_client() -> tuple[object, Stubber]:
    client = boto3.client(
        "pricing", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    stub = Stubber(client)
    stub.activate()
    return client, stub


def expect_instance(stub: Stubber, region: str, instance_type: str, usd: float) -> None:
    filters = costs.instance_filters(region, instance_type)
    attributes = {f["Field"]: f["Value"] for f in filters} | {"servicecode": "AmazonEC2"}
    stub.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [product_item(attributes, usd, "Hrs")]},
        {"ServiceCode": "AmazonEC2", "Filters": filters, "MaxResults": 10},
    )


def expect_storage(stub: Stubber, region: str, ebs_type: str, usd: float) -> None:
    filters = costs.storage_filters(region, ebs_type)
    attributes = {f["Field"]: f["Value"] for f in filters}
    stub.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [product_item(attributes, usd, "GB-Mo")]},
        {"ServiceCode": "AmazonEC2", "Filters": filters, "MaxResults": 10},
    )
