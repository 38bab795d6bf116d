"""`scipioncloud bake`: an ordinary command around the Packer driver (scipioncloud/bake.py)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from scipioncloud import bake as lib
from scipioncloud import versions
from scipioncloud.aws import Aws
from scipioncloud.commands.common import command

DEFAULT_REGION = "eu-west-1"  # when neither --region, AWS_REGION nor the profile names one


@command(None, "bake")
@click.argument("image_name", required=False, default="scipion-desktop")
@click.option("--copy-to", "copy_to", multiple=True, help="Also copy the AMI to this region (repeatable).")
@click.option(
    "--instance-type", default=None, help="Build instance type (default: the image's, g4dn.xlarge)."
)
@click.option("--var", "var_pairs", multiple=True, metavar="NAME=VALUE", help="Override a Packer variable.")
@click.option(
    "--validate-only", is_flag=True, help="Only validate, offline (packer validate, ansible syntax)."
)
@click.option("--all", "all_images", is_flag=True, help="With --validate-only: every image in images/.")
@click.option(
    "--check-aws",
    is_flag=True,
    help="Only check the AWS credentials and regions (make ami does it first, before installing anything).",
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Output folder (build/)."
)
@click.option("--quiet", is_flag=True, help="Do not stream Packer's output (it is still logged).")
def bake(
    run, image_name, copy_to, instance_type, var_pairs, validate_only, all_images, check_aws, out_dir, quiet
):
    """Bake IMAGE_NAME (default scipion-desktop) into an AMI with Packer and Ansible."""
    repo = lib.repo_root()
    out_dir = (out_dir or repo / "build").resolve()
    overrides = lib.parse_vars(var_pairs)
    if instance_type:
        overrides["instance_type"] = instance_type
    if validate_only:
        packer, _ = lib.check_tools()
        out_dir.mkdir(parents=True, exist_ok=True)
        names = lib.known_images(repo) if all_images else [image_name]
        for name in names:
            image = lib.find_image(repo, name)
            lib.validate_image(repo, image, packer, out_dir / f"{name}-validate.log", overrides)
        passed = "packer validate and ansible syntax check passed"
        run.out.emit({"validated": names}, text="\n".join(f"{n}: {passed}" for n in names))
        return
    image = lib.find_image(repo, image_name)
    aws = run.aws
    if not (aws.region or os.environ.get("AWS_REGION") or aws.session.region_name):
        aws = Aws(DEFAULT_REGION, aws.profile)
    region = aws.region_name
    if check_aws:
        account = lib.check_aws(aws, region, list(copy_to))
        regions = [region, *(r for r in copy_to if r != region)]
        run.out.emit(
            {"account": account, "regions": regions},
            text=f"AWS account {account}: credentials work, region(s) {', '.join(regions)} enabled",
        )
        return
    result = lib.bake(
        aws,
        repo,
        image,
        region=region,
        copy_to=list(copy_to),
        overrides=overrides,
        out_dir=out_dir,
        show=not (quiet or run.out.as_json),
    )
    record = {
        "image": result.image,
        "build_time": result.build_time,
        "amis": result.amis,
        "imds_support": result.imds,
        "record": str(result.record),
        "packer_log": str(result.log),
    }
    if run.out.as_json:
        run.out.emit(record)
        return
    run.out.out.print(lib.summary(result, versions.component_versions(repo, image.name)))
    run.out.out.print(f"record: {result.record}\npacker log: {result.log}", highlight=False)


COMMANDS = [bake]
