"""images list/copy/share/prune and volumes against the moto server, through the real CLI."""

from __future__ import annotations

import pytest

from tests.cli.conftest import launch, make_ami

pytestmark = pytest.mark.integration


def test_list_finds_ours_by_tag_in_the_regions_asked(cli, ec2, our_ami):
    make_ami(ec2, "not-ours-really", image="other-image")
    rows = cli.json("images", "list", "--in", "eu-west-1", "--in", "us-east-1")
    assert sorted((r["region"], r["image"]) for r in rows) == [
        ("eu-west-1", "other-image"),
        ("eu-west-1", "scipion-desktop"),
    ]
    only = cli.json("images", "list", "--in", "eu-west-1", "--image", "scipion-desktop")
    assert [r["image_id"] for r in only] == [our_ami]
    assert only[0]["needs_gpu"] is True


def test_copy_to_another_region_keeps_the_tags(cli, our_ami, aws_env):
    import boto3

    copies = cli.json("images", "copy", "scipion-desktop", "--to", "us-east-1")
    assert [c["region"] for c in copies] == ["us-east-1"]
    there = boto3.client("ec2", region_name="us-east-1").describe_images(ImageIds=[copies[0]["image_id"]])
    image = there["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["scipioncloud:image"] == "scipion-desktop"
    assert tags["scipioncloud:source"] == f"eu-west-1/{our_ami}"
    listed = cli.json("images", "list", "--in", "us-east-1")
    assert [r["image_id"] for r in listed] == [copies[0]["image_id"]]
    everywhere = cli.json("images", "list")  # default: every enabled region
    assert sorted((r["region"], r["image_id"]) for r in everywhere) == [
        ("eu-west-1", our_ami),
        ("us-east-1", copies[0]["image_id"]),
    ]


def test_share_with_an_account_and_publicly(cli, ec2, our_ami):
    shared = cli.json("images", "share", our_ami, "--account", "111122223333")
    assert shared["launch_permissions"] == [{"UserId": "111122223333"}]
    snapshot = ec2.describe_images(ImageIds=[our_ami])["Images"][0]["BlockDeviceMappings"][0]["Ebs"][
        "SnapshotId"
    ]
    perms = ec2.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == [{"UserId": "111122223333"}]
    public = cli.json("images", "share", "scipion-desktop", "--public")
    assert {"Group": "all"} in public["launch_permissions"]
    assert ec2.describe_images(ImageIds=[our_ami])["Images"][0]["Public"] is True


def test_share_needs_a_target_and_a_real_account_id(cli, our_ami):
    assert cli("images", "share", our_ami).exit_code == 2
    bad = cli("images", "share", our_ami, "--account", "12345")
    assert bad.exit_code == 2 and "12 digits" in bad.stderr


def test_prune_deregisters_old_amis_and_deletes_their_snapshots(cli, ec2):
    amis = [make_ami(ec2, f"scipion-desktop-{n}") for n in range(3)]
    snapshots = {
        a: ec2.describe_images(ImageIds=[a])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        for a in amis
    }
    listed = cli.json("images", "list", "--in", "eu-west-1")
    newest = listed[0]["image_id"]
    dry = cli.json("images", "prune", "--keep", "1", "--dry-run")
    assert len(dry) == 2 and len(cli.json("images", "list", "--in", "eu-west-1")) == 3

    removed = cli.json("images", "prune", "--keep", "1")
    gone = {r["image_id"] for r in removed}
    assert gone == set(amis) - {newest}
    left = ec2.describe_images(Owners=["self"])["Images"]
    assert [i["ImageId"] for i in left] == [newest]
    existing = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert snapshots[newest] in existing
    assert not {snapshots[a] for a in gone} & existing
    assert cli("images", "prune", "--keep", "0").exit_code == 2


def test_volume_lifecycle(cli, ec2, our_ami, key_pair):
    launched = launch(cli)
    made = cli.json(
        "volumes",
        "create",
        "--size",
        "50",
        "--iops",
        "4000",
        "--throughput",
        "250",
        "--instance",
        launched["instance_id"],
        "--name",
        "movies",
    )
    assert (made["size_gb"], made["type"], made["iops"], made["throughput"]) == (50, "gp3", 4000, 250)
    attached = cli.json("volumes", "attach", made["volume_id"], launched["instance_id"])
    assert attached["instance_id"] == launched["instance_id"] and attached["device"] == "/dev/sdf"
    assert attached["state"] == "in-use"
    snap = cli.json("volumes", "snapshot", made["volume_id"])
    detached = cli.json("volumes", "detach", made["volume_id"])
    assert detached["state"] == "available" and detached["instance_id"] is None
    restored = cli.json("volumes", "create", "--snapshot", snap["snapshot_id"])
    assert restored["size_gb"] == 50 and restored["snapshot_id"] == snap["snapshot_id"]
    ids = {v["volume_id"] for v in cli.json("volumes", "list")}
    assert {made["volume_id"], restored["volume_id"]} <= ids


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["volumes", "create", "--size", "10", "--iops", "90000"], "between 3000 and 80000"),
        (["volumes", "create", "--size", "10", "--type", "io2"], "need --iops"),
        (["volumes", "create", "--size", "10", "--type", "st1", "--throughput", "200"], "gp3 volumes only"),
        (["volumes", "create"], "give --size"),
    ],
)
def test_volume_create_rejects_impossible_settings(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stop", "i-0123456789abcdef0"], "does not exist"),
        (["terminate", "no-such-name"], "unknown instance 'no-such-name'"),
        (["resize", "i-0123456789abcdef0", "--type", "g5.xlarge"], "does not exist"),
        (["desktop", "ghost"], "unknown instance"),
        (["instances", "--region", "mars-1"], "unknown region 'mars-1'"),
        (["images", "list", "--in", "atlantis-2"], "unknown region 'atlantis-2'"),
        (["images", "copy", "scipion-desktop", "--to", "nowhere-1"], "unknown region 'nowhere-1'"),
        (["images", "share", "ghost-image", "--public"], "unknown image 'ghost-image'"),
        (["images", "copy", "ami-12345678", "--to", "us-east-1"], "ami-12345678"),
        (["launch", "--image", "ghost-image", "--key", "lab", "--cidr", "203.0.113.7/32"], "unknown image"),
        (["launch", "--image", "ami-12345678", "--key", "lab", "--cidr", "203.0.113.7/32"], "ami-12345678"),
        (
            ["launch", "--image", "scipion-desktop", "--key", "lost", "--cidr", "203.0.113.7/32"],
            "unknown key pair",
        ),
        (
            [
                "launch",
                "--image",
                "scipion-desktop",
                "--key",
                "lab",
                "--cidr",
                "203.0.113.7/32",
                "--data-volume",
                "10",
                "--data-volume-type",
                "io2",
            ],
            "need --iops",
        ),
        (["volumes", "snapshot", "vol-12345678"], "vol-12345678"),
        (["volumes", "detach", "disk-a"], "unknown volume 'disk-a'"),
        (["volumes", "attach", "vol-12345678", "i-0123456789abcdef0"], "vol-12345678"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, key_pair, our_ami, args, message):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output


def test_bad_input_under_json_is_a_json_error(cli):
    import json

    result = cli("stop", "i-0123456789abcdef0", "--json")
    assert result.exit_code == 2
    assert "does not exist" in json.loads(result.stdout)["error"]


def test_installed_command_honours_aws_endpoint_url(aws_env, our_ami):
    """The console script itself, in its own process, finds the emulator only through AWS_ENDPOINT_URL."""
    import json
    import os
    import subprocess

    from tests.conftest import VENV_BIN

    env = {**os.environ, **aws_env}
    out = subprocess.run(
        [str(VENV_BIN / "scipioncloud"), "images", "list", "--in", "eu-west-1", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert [r["image_id"] for r in json.loads(out.stdout)] == [our_ami]
    env.pop("AWS_ENDPOINT_URL")
    env["AWS_ENDPOINT_URL_EC2"] = "http://127.0.0.1:9"  # nothing listens: proves calls went to the endpoint
    failed = subprocess.run(
        [str(VENV_BIN / "scipioncloud"), "images", "list", "--in", "eu-west-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert failed.returncode == 1 and "cannot reach AWS" in failed.stderr


def test_copies_to_several_regions_start_at_once_and_show_progress(cli, our_ami, calls):
    calls.clear()
    result = cli("images", "copy", "scipion-desktop", "--to", "us-east-1", "--to", "eu-central-1")
    assert result.exit_code == 0, result.output
    # every CopyImage is sent before the first wait: the copies run side by side
    first_wait = calls.index("DescribeImages", calls.index("CopyImage"))
    assert (
        calls.count("CopyImage") == 2 and calls.index("CopyImage", calls.index("CopyImage") + 1) < first_wait
    )
    # piped: one line per progress change and region, ending at 100 %
    assert "us-east-1: 100%" in result.stderr and "eu-central-1: 100%" in result.stderr


def test_snapshot_reports_its_progress(cli, ec2):
    made = cli.json("volumes", "create", "--size", "8")
    result = cli("volumes", "snapshot", made["volume_id"])
    assert result.exit_code == 0, result.output
    assert f"snapshot of {made['volume_id']}: 100%" in result.stderr
