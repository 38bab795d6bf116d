"""One place that makes boto3 sessions and clients, so `--region`, `--profile` and `AWS_ENDPOINT_URL`
(boto3 reads it itself; tests point it at a moto server) mean the same in every command."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import NoRegionError, ProfileNotFound
from botocore.regions import EndpointResolver

from scipioncloud.errors import BadInput

RETRIES = BotoConfig(retries={"mode": "standard", "max_attempts": 5})
WAIT_DELAY_S = 5  # waiter poll interval; tests shorten it through SCIPIONCLOUD_WAIT_DELAY


def make_session(region: str | None, profile: str | None) -> boto3.Session:
    try:
        return boto3.Session(region_name=region, profile_name=profile)
    except ProfileNotFound as exc:
        raise BadInput(f"{exc}; list profiles with `aws configure list-profiles`") from None


@dataclass
class Aws:
    """The AWS context of one command: a session for --region/--profile and clients made from it."""

    region: str | None = None
    profile: str | None = None
    _clients: dict = field(default_factory=dict, repr=False)

    @cached_property
    def session(self) -> boto3.Session:
        # AWS_REGION as well as boto3's own AWS_DEFAULT_REGION (the AWS CLI v2 reads both)
        return make_session(self.region or os.environ.get("AWS_REGION") or None, self.profile)

    @cached_property
    def region_name(self) -> str:
        name = self.session.region_name
        if not name:
            raise BadInput("no AWS region: pass --region REGION or set AWS_REGION")
        self.check_region(name)
        return name

    @cached_property
    def known_regions(self) -> set[str]:
        return known_regions(self.session)

    def check_region(self, region: str) -> None:
        if region not in self.known_regions:
            raise BadInput(
                f"unknown region {region!r}; e.g. eu-west-1, us-east-1 (see `aws ec2 describe-regions`)"
            )

    def client(self, service: str, region: str | None = None):
        region = region or self.region_name
        key = (service, region)
        if key not in self._clients:
            self.check_region(region)
            try:
                self._clients[key] = self.session.client(service, region_name=region, config=RETRIES)
            except NoRegionError:
                raise BadInput("no AWS region: pass --region REGION or set AWS_REGION") from None
        return self._clients[key]

    def ec2(self, region: str | None = None):
        return self.client("ec2", region)


def known_regions(session: boto3.Session) -> set[str]:
    """EC2 regions from botocore's own endpoint data (works offline), every partition. Read from the
    endpoint table itself: `session.get_available_regions("ec2")` parses EC2's whole API model first, only
    to learn that its endpoint prefix is "ec2" (a tenth of a second at every command's start)."""
    resolver = EndpointResolver(session._loader.load_data("endpoints"))
    regions: set[str] = set()
    for partition in resolver.get_available_partitions():
        regions.update(resolver.get_available_endpoints("ec2", partition))
    return regions


def waiter_config(max_wait_s: float = 900) -> dict:
    delay = float(os.environ.get("SCIPIONCLOUD_WAIT_DELAY", WAIT_DELAY_S))
    return {"Delay": delay, "MaxAttempts": max(1, int(max_wait_s / max(delay, 0.1)))}


def tags_dict(tags: list[dict] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}
