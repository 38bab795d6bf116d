"""The account's vCPU quota for a GPU instance family (Service Quotas), read before a launch or a bake so
a new account at 0 vCPUs hears it at once, with the command that asks for more, instead of a late
VcpuLimitExceeded. EC2 quotas count vCPUs of running instances per family, not instances."""

from __future__ import annotations

import re
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from scipioncloud.aws import Aws
from scipioncloud.errors import OperationFailed

# Service Quotas codes (service "ec2") for on-demand instances, by the family letters they cover.
ON_DEMAND = {
    "G and VT": ("L-DB2E81BA", ("g", "vt")),
    "P": ("L-417A185B", ("p",)),
}


@dataclass
class QuotaCheck:
    family: str | None  # "G and VT", "P", or None when the type needs no GPU quota of ours
    quota_code: str | None
    limit_vcpus: float | None  # None: the quota could not be read (no permission, emulator)
    used_vcpus: int
    wanted_vcpus: int
    note: str = ""

    @property
    def enough(self) -> bool | None:
        if self.limit_vcpus is None:
            return None
        return self.used_vcpus + self.wanted_vcpus <= self.limit_vcpus

    def as_dict(self) -> dict:
        return {**vars(self), "enough": self.enough}


def family_of(instance_type: str) -> tuple[str, str] | None:
    """('G and VT', code) for g4dn.xlarge, gr6.4xlarge, vt1.3xlarge; ('P', code) for p5.48xlarge."""
    match = re.match(r"[a-z]+", instance_type)
    letters = match.group(0) if match else ""
    for family, (code, starts) in ON_DEMAND.items():
        if any(letters.startswith(s) for s in starts):
            return family, code
    return None


def _vcpus(ec2, types: set[str]) -> dict[str, int]:
    if not types:
        return {}
    found = ec2.describe_instance_types(InstanceTypes=sorted(types))["InstanceTypes"]
    return {t["InstanceType"]: t["VCpuInfo"]["DefaultVCpus"] for t in found}


def running_vcpus(aws: Aws, family: str) -> int:
    """vCPUs of this account's pending and running instances that count against `family`'s quota."""
    pages = (
        aws.ec2()
        .get_paginator("describe_instances")
        .paginate(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    )
    types = [
        i["InstanceType"]
        for page in pages
        for r in page["Reservations"]
        for i in r["Instances"]
        if (family_of(i["InstanceType"]) or (None,))[0] == family
    ]
    per_type = _vcpus(aws.ec2(), set(types))
    return sum(per_type.get(t, 0) for t in types)


def check(aws: Aws, instance_type: str, vcpus: int) -> QuotaCheck:
    """Read the quota and what runs against it; never raises for an unreadable quota (it says so)."""
    found = family_of(instance_type)
    if found is None:
        return QuotaCheck(None, None, None, 0, vcpus, note=f"{instance_type} needs no GPU quota")
    family, code = found
    used = running_vcpus(aws, family)
    try:
        quota = aws.client("service-quotas").get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]
        limit = float(quota["Value"])
        note = ""
    except (ClientError, BotoCoreError) as exc:
        limit, note = None, f"could not read quota {code} ({exc}); AWS will say at launch if it is too low"
    return QuotaCheck(family, code, limit, used, vcpus, note)


def require(aws: Aws, instance_type: str, vcpus: int, count: int = 1) -> QuotaCheck:
    """check(), then refuse when the quota is known and too small, with the command that asks for more."""
    result = check(aws, instance_type, vcpus * count)
    if result.enough is False:
        need = int(result.used_vcpus + result.wanted_vcpus)
        raise OperationFailed(
            f"{instance_type} needs {result.wanted_vcpus} vCPUs of the '{result.family}' on-demand quota in "
            f"{aws.region_name}, which allows {result.limit_vcpus:g} ({result.used_vcpus} in use). Ask for "
            f"more: `aws service-quotas request-service-quota-increase --service-code ec2 --quota-code "
            f"{result.quota_code} --desired-value {need} --region {aws.region_name}` (or the Service Quotas "
            "console); increases take from minutes to a few days",
            quota=result.as_dict(),
        )
    return result
