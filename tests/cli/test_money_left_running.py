"""What keeps costing money after the work is done: deleting volumes and snapshots safely, and commands
that never end on a traceback (odd volumes, SSO sessions not logged in, partial credentials)."""

from __future__ import annotations

import html
import json
import re

import botocore.session
import pytest
from click.testing import CliRunner

from scipioncloud import costs, volumes
from scipioncloud.cli import main
from tests.cli.conftest import launch

pytestmark = pytest.mark.integration


def _gp3_per_gb() -> float:
    return costs.load_table().regions["eu-west-1"].ebs_per_gb_month["gp3"]


def test_volumes_delete_refuses_attached_and_unsnapshotted_then_deletes(cli, ec2, our_ami, key_pair):
    launched = launch(cli)
    made = cli.json("volumes", "create", "--size", "40", "--instance", launched["instance_id"])
    cli.json("volumes", "attach", made["volume_id"], launched["instance_id"])
    attached = cli("volumes", "delete", made["volume_id"], "--yes")
    assert attached.exit_code == 1 and "in-use" in attached.stderr and "detach" in attached.stderr
    assert ec2.describe_volumes(VolumeIds=[made["volume_id"]])["Volumes"][0]["State"] == "in-use"
    cli.json("volumes", "detach", made["volume_id"])

    only_copy = cli("volumes", "delete", made["volume_id"])
    assert only_copy.exit_code == 1
    assert "has no snapshot: deleting it loses its data for good" in only_copy.stderr
    assert ec2.describe_volumes(VolumeIds=[made["volume_id"]])["Volumes"][0]["State"] == "available"

    snap = cli.json("volumes", "snapshot", made["volume_id"])
    done = cli.json("volumes", "delete", made["volume_id"])
    assert done["deleted"] is True and done["snapshots"] == [snap["snapshot_id"]]
    assert done["monthly_saving"] == round(40 * _gp3_per_gb(), 2)
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [made["volume_id"]]}])["Volumes"]


def test_volumes_delete_yes_deletes_the_only_copy_and_says_the_saving(cli, ec2):
    made = cli.json("volumes", "create", "--size", "10")
    done = cli("volumes", "delete", made["volume_id"], "--yes")
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == (
        f"{made['volume_id']} deleted (10 GB gp3); saves ${10 * _gp3_per_gb():.2f}/month"
    )


def test_snapshots_list_and_delete_keep_the_only_copy_and_images(cli, ec2, our_ami):
    made = cli.json("volumes", "create", "--size", "30")
    first = cli.json("volumes", "snapshot", made["volume_id"])["snapshot_id"]
    second = cli.json("volumes", "snapshot", made["volume_id"])["snapshot_id"]
    listed = {s["snapshot_id"]: s for s in cli.json("snapshots", "list", "--volume", made["volume_id"])}
    assert set(listed) == {first, second}
    assert listed[first]["size_gb"] == 30 and listed[first]["state"] == "completed"

    cli.json("volumes", "delete", made["volume_id"])  # two snapshots keep its data
    per_gb = costs.load_table().regions["eu-west-1"].snapshot_per_gb_month
    done = cli.json("snapshots", "delete", first)  # another copy remains
    assert done["monthly_saving_up_to"] == round(30 * per_gb, 2)
    refused = cli("snapshots", "delete", second)  # now the only copy of a deleted volume
    assert refused.exit_code == 1 and "is the only copy" in refused.stderr
    assert ec2.describe_snapshots(SnapshotIds=[second])["Snapshots"]
    assert cli.json("snapshots", "delete", second, "--yes")["deleted"] is True

    image_snapshot = ec2.describe_images(ImageIds=[our_ami])["Images"][0]["BlockDeviceMappings"][0]["Ebs"][
        "SnapshotId"
    ]
    rows = {s["snapshot_id"]: s for s in cli.json("snapshots", "list")}
    assert rows[image_snapshot]["image_id"] == our_ami
    in_use = cli("snapshots", "delete", image_snapshot, "--yes")
    assert in_use.exit_code == 1 and our_ami in in_use.stderr and "images prune" in in_use.stderr


def test_volumes_list_survives_an_odd_volume():
    # EC2 leaves fields out for volumes in odd states (creating, error): the listing shows blanks.
    row = volumes.summarize({"VolumeId": "vol-0abc", "State": "error", "Attachments": [{}]})
    assert row["volume_id"] == "vol-0abc" and row["state"] == "error"
    assert row["zone"] is None and row["instance_id"] is None


def test_piped_tables_print_whole_ids_on_one_line(cli, ec2):
    made = [cli.json("volumes", "create", "--size", "5", "--name", f"movies-{i}") for i in range(2)]
    piped = cli("volumes", "list")
    assert piped.exit_code == 0
    lines = piped.stdout.splitlines()
    assert lines[0].split() == ["volume", "name", "GB", "type", "zone", "state", "instance", "device"]
    for volume in made:
        line = next(line for line in lines if volume["volume_id"] in line)
        assert line.split()[:3] == [volume["volume_id"], volume["name"], "5"]


def test_json_errors_are_the_only_document_on_stdout(cli):
    result = cli("volumes", "delete", "vol-0123456789abcdef0", "--json")
    assert result.exit_code == 2
    assert list(json.loads(result.stdout)) == ["error"]  # one document, parsable as a whole


@pytest.mark.parametrize(
    ("volume_type", "size", "ok"),
    [("gp3", 0, False), ("gp3", 1, True), ("st1", 100, False), ("st1", 125, True), ("io2", 3, False)],
)
def test_volume_sizes_are_checked_before_any_aws_call(cli, calls, volume_type, size, ok):
    args = ["volumes", "create", "--size", str(size), "--type", volume_type]
    if volume_type.startswith("io"):
        args += ["--iops", "3000"]
    result = cli(*args)
    assert (result.exit_code == 0) is ok, result.output
    if not ok:
        assert result.exit_code == 2 and "holds" in result.stderr
        assert "CreateVolume" not in calls


def test_zone_and_instance_are_checked_before_creating(cli, calls):
    unknown = cli("volumes", "create", "--size", "5", "--zone", "eu-west-9z")
    assert unknown.exit_code == 2 and "unknown zone 'eu-west-9z'" in unknown.stderr
    both = cli("volumes", "create", "--size", "5", "--zone", "eu-west-1a", "--instance", "cryo-1")
    assert both.exit_code == 2 and "not both" in both.stderr
    assert "CreateVolume" not in calls


def test_ebs_limits_match_ec2s_own_documentation():
    """SIZE_GB, GP3_IOPS and GP3_THROUGHPUT against the CreateVolume documentation in botocore's EC2
    service model (AWS's own text, shipped with the SDK): the test fails when AWS moves a bound."""
    model = botocore.session.get_session().get_service_model("ec2").operation_model("CreateVolume")
    members = model.input_shape.members

    def text(name: str) -> str:
        plain = re.sub(r"<[^>]+>", "", html.unescape(members[name].documentation))
        return plain.replace(",", "").replace("\u00a0", " ")

    sizes = text("Size")
    for kinds, low, high in re.findall(r"((?:[a-z0-9]+(?: and )?)+): (\d+) - (\d+)\s*GiB", sizes):
        for kind in kinds.split(" and "):
            if kind in volumes.SIZE_GB:
                assert volumes.SIZE_GB[kind] == (int(low), int(high)), kind
    assert set(volumes.SIZE_GB) <= set(re.findall(r"\b(gp2|gp3|io1|io2|st1|sc1)\b", sizes))
    gp3 = re.search(r"gp3: (\d+)\s*\(default\)\s*- (\d+) IOPS", text("Iops"))
    assert gp3 and (int(gp3[1]), int(gp3[2])) == volumes.GP3_IOPS
    throughput = re.search(r"(\d+) - (\d+) MiB/s", text("Throughput"))
    assert throughput and (int(throughput[1]), int(throughput[2])) == volumes.GP3_THROUGHPUT


def _no_traceback(result) -> None:
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(
        result.exception, SystemExit
    )


def test_sso_profile_not_logged_in_says_what_to_run(tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.write_text(
        "[profile lab-sso]\nsso_session = lab\nsso_account_id = 111122223333\nsso_role_name = Admin\n"
        "region = eu-west-1\n[sso-session lab]\nsso_start_url = https://lab.awsapps.com/start\n"
        "sso_region = eu-west-1\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty SSO token cache
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing is sent; never AWS
    result = CliRunner().invoke(main, ["volumes", "list", "--profile", "lab-sso"])
    _no_traceback(result)
    assert result.exit_code == 2
    assert "run `aws sso login --profile lab-sso`" in result.stderr


def test_partial_credentials_say_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(main, ["snapshots", "list", "--region", "eu-west-1", "--json"])
    _no_traceback(result)
    assert result.exit_code == 2
    assert "AWS_SECRET_ACCESS_KEY" in json.loads(result.stdout)["error"]
