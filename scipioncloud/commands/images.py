"""`scipioncloud images ...`"""

from __future__ import annotations

import click

from scipioncloud import images as lib
from scipioncloud.commands.common import command

COLUMNS = [
    ("region", "region"),
    ("image_id", "AMI"),
    ("image", "image"),
    ("name", "name"),
    ("created", "created"),
    ("state", "state"),
    ("public", "public"),
]


@click.group()
def images() -> None:
    """Our AMIs across regions: list, copy, share, prune."""


@command(images, "list")
@click.option(
    "--in", "regions", multiple=True, metavar="REGION", help="Only these regions (default: all enabled)."
)
@click.option("--image", help="Only this image name (tag scipioncloud:image).")
def list_(run, regions, image):
    """List our AMIs (tagged scipioncloud:image) in every enabled region."""
    for region in regions:
        run.aws.ec2(region)  # validates the name before any request
    found = lib.list_images(run.aws, list(regions) or None, image)
    run.out.table(found, COLUMNS, title="ScipionCloud images")


@command(images, "copy")
@click.argument("image")
@click.option(
    "--to", "to_regions", multiple=True, required=True, metavar="REGION", help="Destination (repeatable)."
)
@click.option("--no-wait", is_flag=True, help="Return once the copies are requested.")
def copy(run, image, to_regions, no_wait):
    """Copy IMAGE (name or AMI id, in --region) to other regions, with its tags."""
    for region in to_regions:
        run.aws.ec2(region)
    run.out.info(f"copying {image} from {run.aws.region_name} to {', '.join(to_regions)} at once")
    with run.out.progress("copy") as progress:
        copies = lib.copy(run.aws, image, list(to_regions), wait=not no_wait, on_progress=progress)
    run.out.table(copies, [("region", "region"), ("image_id", "AMI"), ("source", "copied from")])


@command(images, "share")
@click.argument("image")
@click.option("--public", is_flag=True, help="Let every AWS account launch it.")
@click.option(
    "--account", "accounts", multiple=True, metavar="ID", help="Let this account launch it (repeatable)."
)
def share(run, image, public, accounts):
    """Grant launch permission on IMAGE."""
    result = lib.share(run.aws, image, public, tuple(accounts))
    who = ", ".join(p.get("Group") or p.get("UserId") for p in result["launch_permissions"])
    run.out.emit(result, text=f"{result['image_id']} in {result['region']} can be launched by: {who}")


@command(images, "prune")
@click.option("--keep", type=int, required=True, help="Newest AMIs to keep per image name and region.")
@click.option("--image", help="Only this image name.")
@click.option(
    "--in", "regions", multiple=True, metavar="REGION", help="Regions to prune (default: --region)."
)
@click.option("--dry-run", is_flag=True, help="Say what would go, remove nothing.")
def prune(run, keep, image, regions, dry_run):
    """Deregister all but the newest --keep AMIs and delete their snapshots."""
    for region in regions:
        run.aws.ec2(region)
    removed = lib.prune(run.aws, keep, image, list(regions) or None, dry_run)
    rows = [r | {"snapshots": " ".join(r["snapshots"])} for r in removed]
    title = "would remove" if dry_run else "removed"
    run.out.table(
        rows,
        [
            ("region", "region"),
            ("image_id", "AMI"),
            ("created", "created"),
            ("snapshots", "snapshots deleted"),
        ],
        title=title,
        data=removed,
    )


COMMANDS = [images]
