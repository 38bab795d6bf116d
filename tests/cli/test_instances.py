"""launch / resize / terminate / desktop against the moto server over HTTP, through the real CLI."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agent import userdata as agent_userdata
from agent.config import load as load_agent_config
from scipioncloud import console, costs, userdata
from tests.cli.conftest import CIDR, launch

pytestmark = pytest.mark.integration


def instance(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def test_launch_opens_only_ssh_and_https_to_the_cidr_with_imdsv2_and_stop(cli, ec2, our_ami, key_pair):
    result = launch(cli, "--disk", "100", "--data-volume", "500", "--name", "cryo-1")
    assert result["state"] == "running"
    group = ec2.describe_security_groups(GroupIds=[result["security_group"]])["SecurityGroups"][0]
    rules = sorted(
        (p["IpProtocol"], p["FromPort"], p["ToPort"], tuple(r["CidrIp"] for r in p["IpRanges"]))
        for p in group["IpPermissions"]
    )
    assert rules == [("tcp", 22, 22, (CIDR,)), ("tcp", 443, 443, (CIDR,))]

    found = instance(ec2, result["instance_id"])
    assert found["MetadataOptions"]["HttpTokens"] == "required"
    assert found["MetadataOptions"]["HttpEndpoint"] == "enabled"
    behaviour = ec2.describe_instance_attribute(
        InstanceId=result["instance_id"], Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "stop"
    assert [g["GroupId"] for g in found["SecurityGroups"]] == [result["security_group"]]
    tags = {t["Key"]: t["Value"] for t in found["Tags"]}
    assert tags == {"Name": "cryo-1", "scipioncloud:managed": "true", "scipioncloud:image": "scipion-desktop"}
    assert found["ImageId"] == our_ami and found["KeyName"] == "lab"

    volumes = {
        v["Attachments"][0]["Device"]: v
        for v in ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [result["instance_id"]]}]
        )["Volumes"]
    }
    assert volumes["/dev/sda1"]["Size"] == 100 and volumes["/dev/sda1"]["VolumeType"] == "gp3"
    assert volumes["/dev/sdf"]["Size"] == 500
    delete = {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"] for m in found["BlockDeviceMappings"]}
    assert delete == {"/dev/sda1": True, "/dev/sdf": False}  # data outlives the instance
    assert result["ssh"] == f"ssh -i lab.pem ubuntu@{found['PublicIpAddress']}"


def test_launch_auto_stop_user_data_lands_in_agent_toml(cli, ec2, our_ami, key_pair, tmp_path):
    result = launch(cli, "--auto-stop", "90m", "--auto-stop-grace", "5m")
    raw = ec2.describe_instance_attribute(InstanceId=result["instance_id"], Attribute="userData")
    text = base64.b64decode(raw["UserData"]["Value"]).decode()
    assert text.startswith(userdata.MARKER + "\n")
    # What the instance's first boot does with it: merge into the existing agent.toml.
    config = tmp_path / "agent.toml"
    config.write_text('[server]\nbind = "127.0.0.1:9777"\n[idle]\ncpu_pct = 20\n')
    assert agent_userdata.apply(text, config)  # the agent's code (scipioncloud-agent userdata)
    loaded = load_agent_config(config)
    assert loaded.idle.action == "poweroff"
    assert loaded.idle.window_min == 90
    assert loaded.idle.grace_min == 5
    assert loaded.idle.cpu_pct == 20  # the file's own keys survive
    assert loaded.server.bind == "127.0.0.1:9777"


def test_launch_without_auto_stop_sends_no_user_data(cli, ec2, our_ami, key_pair):
    result = launch(cli)
    raw = ec2.describe_instance_attribute(InstanceId=result["instance_id"], Attribute="userData")
    assert not raw.get("UserData", {}).get("Value")


@pytest.mark.parametrize(
    ("instance_type", "message"),
    [
        ("p3.2xlarge", "unknown instance type 'p3.2xlarge'"),
        ("m5.bogus", "unknown instance type 'm5.bogus'"),
        ("t3.micro", "has no NVIDIA GPU"),
    ],
)
def test_launch_rejects_bad_types_before_creating_anything(
    cli, ec2, our_ami, key_pair, calls, instance_type, message
):
    result = cli(
        "launch",
        "--image",
        "scipion-desktop",
        "--type",
        instance_type,
        "--key",
        "lab",
        "--cidr",
        CIDR,
        "--no-wait",
    )
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 or "launching" in result.stderr.splitlines()[0]
    assert "RunInstances" not in calls and "CreateSecurityGroup" not in calls
    assert (
        ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["scipioncloud:managed"]}])[
            "Reservations"
        ]
        == []
    )


def test_launch_without_cidr_fails_clearly_when_the_address_lookup_fails(cli, our_ami, key_pair):
    result = cli("launch", "--image", "scipion-desktop", "--key", "lab", "--no-wait")
    assert result.exit_code == 2
    assert "pass --cidr" in result.stderr


def test_launch_refuses_the_whole_internet(cli, our_ami, key_pair):
    result = cli("launch", "--image", "scipion-desktop", "--key", "lab", "--cidr", "0.0.0.0/0", "--no-wait")
    assert result.exit_code == 2 and "whole internet" in result.stderr


def fake_console_with_desktop_line(after_calls: int):
    """Stand-in for EC2 GetConsoleOutput (moto's text is fixed): the real output, and from the
    `after_calls`-th read on, the line the instance's first boot writes."""
    real = console.read_console
    count = {"n": 0}

    def read(ec2, instance_id):
        count["n"] += 1
        text = real(ec2, instance_id)
        if count["n"] >= after_calls:
            text += (
                "[   42.1] firstboot[612]: SCIPIONCLOUD-DESKTOP url=https://54.1.2.3/ password=s3cret-Pw\n"
            )
        return text

    return read, count


def test_launch_waits_for_the_desktop_line_and_prints_it(cli, our_ami, key_pair, monkeypatch):
    read, count = fake_console_with_desktop_line(after_calls=2)
    monkeypatch.setattr(console, "read_console", read)
    monkeypatch.setattr(console, "wait_for_desktop", _fast_wait(console.wait_for_desktop))
    result = cli("launch", "--image", "scipion-desktop", "--key", "lab", "--cidr", CIDR)
    assert result.exit_code == 0, result.output
    assert "desktop:  https://54.1.2.3/" in result.stdout
    assert "password: s3cret-Pw" in result.stdout
    assert "ssh -i lab.pem ubuntu@" in result.stdout
    assert count["n"] == 2


def _fast_wait(real):
    return lambda read, timeout_s, **kw: real(read, timeout_s=timeout_s, interval_s=0.05)


def test_launch_gives_up_waiting_with_a_clear_message(cli, our_ami, key_pair, monkeypatch):
    monkeypatch.setattr(console, "wait_for_desktop", _fast_wait(console.wait_for_desktop))
    result = cli("launch", "--image", "scipion-desktop", "--key", "lab", "--cidr", CIDR, "--timeout", "0.005")
    assert result.exit_code == 1
    assert "no desktop line" in result.stderr and "scipioncloud desktop" in result.stderr


def test_desktop_reads_the_console(cli, our_ami, key_pair, monkeypatch):
    launched = launch(cli, "--name", "cryo-2")
    assert cli("desktop", "cryo-2").exit_code == 1  # not published yet
    read, _ = fake_console_with_desktop_line(after_calls=1)
    monkeypatch.setattr(console, "read_console", read)
    shown = cli.json("desktop", launched["instance_id"])
    assert shown == {"url": "https://54.1.2.3/", "password": "s3cret-Pw"}


def test_resize_stops_modifies_and_starts_in_order(cli, ec2, our_ami, key_pair, calls):
    launched = launch(cli)
    calls.clear()
    result = cli.json("resize", launched["instance_id"], "--type", "g5.xlarge")
    order = [c for c in calls if c in ("StopInstances", "ModifyInstanceAttribute", "StartInstances")]
    assert order == ["StopInstances", "ModifyInstanceAttribute", "StartInstances"]
    assert calls.index("DescribeInstanceTypes") < calls.index("StopInstances")
    found = instance(ec2, launched["instance_id"])
    assert result == {
        "instance_id": launched["instance_id"],
        "old_type": "g4dn.xlarge",
        "type": "g5.xlarge",
        "state": "running",
        "public_ip": found["PublicIpAddress"],  # the new address, after the restart
        "ssh": f"ssh -i lab.pem ubuntu@{found['PublicIpAddress']}",
    }
    assert found["InstanceType"] == "g5.xlarge"


def test_resize_keeps_a_stopped_instance_stopped(cli, ec2, our_ami, key_pair, calls):
    launched = launch(cli)
    assert cli("stop", launched["instance_id"]).exit_code == 0
    calls.clear()
    result = cli.json("resize", launched["instance_id"], "--type", "g6.xlarge")
    assert "StopInstances" not in calls and "StartInstances" not in calls
    assert result["state"] == "stopped" and result["type"] == "g6.xlarge"


def test_resize_to_a_cpu_type_needs_consent(cli, ec2, our_ami, key_pair):
    launched = launch(cli)
    refused = cli("resize", launched["instance_id"], "--type", "r5.2xlarge")
    assert refused.exit_code == 2 and "has no NVIDIA GPU" in refused.stderr
    done = cli.json("resize", launched["instance_id"], "--type", "r5.2xlarge", "--allow-no-gpu")
    assert done["type"] == "r5.2xlarge"


def test_resize_rejects_an_unknown_type_without_stopping(cli, ec2, our_ami, key_pair, calls):
    launched = launch(cli)
    result = cli("resize", launched["instance_id"], "--type", "p2.xlarge")
    assert result.exit_code == 2 and "unknown instance type 'p2.xlarge'" in result.stderr
    assert "StopInstances" not in calls
    assert instance(ec2, launched["instance_id"])["State"]["Name"] == "running"


def _devices(ec2, instance_id: str) -> dict[str, str]:
    found = instance(ec2, instance_id)
    return {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in found["BlockDeviceMappings"]}


def test_terminate_refuses_while_a_data_volume_would_be_lost(cli, ec2, our_ami, key_pair):
    launched = launch(cli, "--data-volume", "200")
    root = _devices(ec2, launched["instance_id"])["/dev/sda1"]
    # A data volume someone attached with DeleteOnTermination: terminating would delete its only copy.
    zone = instance(ec2, launched["instance_id"])["Placement"]["AvailabilityZone"]
    scratch = ec2.create_volume(Size=50, AvailabilityZone=zone, VolumeType="gp3")["VolumeId"]
    ec2.attach_volume(VolumeId=scratch, InstanceId=launched["instance_id"], Device="/dev/sdg")
    ec2.modify_instance_attribute(
        InstanceId=launched["instance_id"],
        BlockDeviceMappings=[{"DeviceName": "/dev/sdg", "Ebs": {"DeleteOnTermination": True}}],
    )

    refused = cli("terminate", launched["instance_id"])
    assert refused.exit_code == 1
    assert f"{scratch} (/dev/sdg, 50 GB, no snapshot)" in refused.stderr
    assert root not in refused.stderr  # the system disk is made again from the image: no snapshot asked
    assert instance(ec2, launched["instance_id"])["State"]["Name"] == "running"

    snap = cli.json("volumes", "snapshot", scratch)
    assert snap["state"] == "completed"
    data = _devices(ec2, launched["instance_id"])["/dev/sdf"]
    done = cli.json("terminate", launched["instance_id"])
    assert sorted(done["deleted_volumes"]) == sorted([root, scratch]) and done["kept_volumes"] == [data]
    assert done["lost_without_snapshot"] == []
    assert instance(ec2, launched["instance_id"])["State"]["Name"] == "terminated"
    assert ec2.describe_volumes(VolumeIds=[data])["Volumes"][0]["State"] == "available"
    assert done["deleted_security_groups"] == [launched["security_group"]]
    # what is kept goes on costing money, and the result says how much (eu-west-1 gp3 from the table)
    per_gb = costs.load_table().regions["eu-west-1"].ebs_per_gb_month["gp3"]
    assert done["kept_and_billed"] == [
        {
            "volume_id": data,
            "device": "/dev/sdf",
            "size_gb": 200,
            "type": "gp3",
            "monthly_cost": round(200 * per_gb, 2),
        }
    ]
    assert done["kept_monthly_cost"] == round(200 * per_gb, 2)


def test_terminate_says_what_is_kept_and_billed_in_text(cli, ec2, our_ami, key_pair):
    launched = launch(cli, "--data-volume", "300")
    data = _devices(ec2, launched["instance_id"])["/dev/sdf"]
    done = cli("terminate", launched["instance_id"])
    assert done.exit_code == 0, done.output
    per_gb = costs.load_table().regions["eu-west-1"].ebs_per_gb_month["gp3"]
    assert f"kept:     {data} (/dev/sdf, 300 GB gp3), still billed ${300 * per_gb:.2f}/month" in done.stdout
    assert f"scipioncloud volumes delete {data}" in done.stdout


def test_terminate_yes_overrides_and_says_what_was_lost(cli, ec2, our_ami, key_pair):
    launched = launch(cli)
    zone = instance(ec2, launched["instance_id"])["Placement"]["AvailabilityZone"]
    scratch = ec2.create_volume(Size=20, AvailabilityZone=zone, VolumeType="gp3")["VolumeId"]
    ec2.attach_volume(VolumeId=scratch, InstanceId=launched["instance_id"], Device="/dev/sdg")
    ec2.modify_instance_attribute(
        InstanceId=launched["instance_id"],
        BlockDeviceMappings=[{"DeviceName": "/dev/sdg", "Ebs": {"DeleteOnTermination": True}}],
    )
    done = cli.json("terminate", launched["instance_id"], "--yes")
    assert done["lost_without_snapshot"] == [scratch]
    assert instance(ec2, launched["instance_id"])["State"]["Name"] == "terminated"


def test_commands_that_end_or_change_an_instance_act_only_on_ours(cli, ec2, our_ami, key_pair, calls):
    base = ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
    name_tag = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "billing-db"}]}]
    theirs = ec2.run_instances(
        ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.micro", TagSpecifications=name_tag
    )["Instances"][0]["InstanceId"]
    calls.clear()
    for args in (
        ["stop", "billing-db"],
        ["resize", "billing-db", "--type", "g5.xlarge"],
        ["terminate", "billing-db", "--yes"],
    ):
        refused = cli(*args)
        assert refused.exit_code == 2, args
        assert f"{theirs} (billing-db) was not launched by scipioncloud" in refused.stderr
        assert "--any-instance" in refused.stderr
    assert not {"StopInstances", "ModifyInstanceAttribute", "TerminateInstances"} & set(calls)
    assert instance(ec2, theirs)["State"]["Name"] == "running"
    assert cli.json("stop", "billing-db", "--any-instance")["state"] == "stopped"


def test_instances_lists_ours_with_price(cli, ec2, our_ami, key_pair):
    launched = launch(cli, "--name", "cryo-3")
    rows = cli.json("instances")
    assert [(r["instance_id"], r["name"], r["state"], r["type"]) for r in rows] == [
        (launched["instance_id"], "cryo-3", "running", "g4dn.xlarge")
    ]
    assert rows[0]["price_per_h"] == 0.587  # eu-west-1 in the shipped table
    assert rows[0]["cost_so_far"] == pytest.approx(rows[0]["uptime_h"] * 0.587, abs=0.01)
    cli.json("stop", "cryo-3")
    assert cli.json("instances")[0]["state"] == "stopped"
    started = cli.json("start", "cryo-3")
    assert started["state"] == "running"


def test_ssh_key_default_is_the_key_pair_name(tmp_path: Path):
    from scipioncloud.instances import ssh_command

    assert (
        ssh_command({"PublicIpAddress": "198.51.100.4", "KeyName": "lab"})
        == "ssh -i lab.pem ubuntu@198.51.100.4"
    )
