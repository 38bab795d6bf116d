"""Who may reach an instance's SSH and desktop: the addresses its security group opens ports 22 and 443
to. Users move between the lab, home and a VPN; `scipioncloud access` opens the ports to where they are now
and can close them to where they were."""

from __future__ import annotations

from botocore.exceptions import ClientError

from scipioncloud import lookup
from scipioncloud.aws import Aws
from scipioncloud.errors import BadInput, from_client_error
from scipioncloud.instances import DESKTOP_PORTS
from scipioncloud.tags import TAG_INSTANCE


def _our_group(aws: Aws, instance: dict) -> dict:
    """The group `launch` made for this instance (tagged with its id)."""
    attached = [g["GroupId"] for g in instance.get("SecurityGroups", [])]
    groups = aws.ec2().describe_security_groups(
        Filters=[{"Name": f"tag:{TAG_INSTANCE}", "Values": [instance["InstanceId"]]}]
    )["SecurityGroups"]
    mine = [g for g in groups if g["GroupId"] in attached]
    if not mine:
        raise BadInput(
            f"{instance['InstanceId']} has no security group made by `scipioncloud launch`; "
            "change its rules in the EC2 console"
        )
    return mine[0]


def allowed(group: dict) -> dict[int, list[str]]:
    """Port -> the IPv4 blocks it is open to."""
    found: dict[int, list[str]] = {port: [] for port in DESKTOP_PORTS}
    for permission in group.get("IpPermissions", []):
        port = permission.get("FromPort")
        if permission.get("IpProtocol") == "tcp" and port in found and permission.get("ToPort") == port:
            found[port] += [r["CidrIp"] for r in permission.get("IpRanges", [])]
    return found


def _permissions(cidrs_by_port: dict[int, list[str]]) -> list[dict]:
    return [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": c, "Description": "ScipionCloud access"} for c in cidrs],
        }
        for port, cidrs in cidrs_by_port.items()
        if cidrs
    ]


def allow(aws: Aws, name_or_id: str, cidr: str, *, remove_old: bool = False) -> dict:
    """Open SSH and the desktop to `cidr`; with remove_old, close them to every other address."""
    instance = lookup.instance(aws, name_or_id, ours_only=True)
    ec2 = aws.ec2()
    group = _our_group(aws, instance)
    before = allowed(group)
    add = {port: [cidr] for port, cidrs in before.items() if cidr not in cidrs}
    drop = {port: [c for c in cidrs if c != cidr] for port, cidrs in before.items()} if remove_old else {}
    try:
        if _permissions(add):
            ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=_permissions(add))
        if _permissions(drop):
            ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=_permissions(drop))
    except ClientError as exc:
        raise from_client_error(exc, f"security group {group['GroupId']}") from None
    after = allowed(ec2.describe_security_groups(GroupIds=[group["GroupId"]])["SecurityGroups"][0])
    return {
        "instance_id": instance["InstanceId"],
        "security_group": group["GroupId"],
        "added": cidr if add else None,
        "removed": sorted({c for cidrs in drop.values() for c in cidrs}),
        "allowed": {str(port): sorted(cidrs) for port, cidrs in after.items()},
    }
