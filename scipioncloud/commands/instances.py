"""`scipioncloud launch | instances | stop | start | resize | terminate | desktop | status`"""

from __future__ import annotations

from pathlib import Path

import click

from scipioncloud import access as access_lib
from scipioncloud import agent_client, console, costs, tunnel
from scipioncloud import instances as lib
from scipioncloud.commands.common import command, parse_minutes
from scipioncloud.errors import BadInput, Interrupted, OperationFailed
from scipioncloud.network import caller_cidr, normalize_cidr


def _desktop_text(result: dict) -> str:
    lines = []
    if result.get("desktop_url"):
        lines += [f"desktop:  {result['desktop_url']}", f"password: {result['password']}"]
    if result.get("ssh"):
        lines.append(f"ssh:      {result['ssh']}")
    return "\n".join(lines)


@command(None, "launch")
@click.option("--image", required=True, help="Image name (tag scipioncloud:image) or AMI id.")
@click.option(
    "--image-owner",
    "image_owners",
    multiple=True,
    metavar="ACCOUNT",
    help="Also look for NAME among the images this account (e.g. your facility's) shared with you.",
)
@click.option("--type", "instance_type", default="g4dn.xlarge", show_default=True, help="EC2 instance type.")
@click.option("--disk", "disk_gb", type=int, default=100, show_default=True, help="System disk, GB (gp3).")
@click.option(
    "--data-volume",
    "data_gb",
    type=int,
    default=0,
    help="Also make a data volume of this many GB (kept when the instance is terminated).",
)
@click.option("--data-volume-type", default="gp3", show_default=True)
@click.option("--key", "key_name", required=True, help="EC2 key pair name.")
@click.option("--cidr", help="Who may reach SSH and the desktop (default: your public address/32).")
@click.option("--name", help="Name tag (default: IMAGE-xxxxxx).")
@click.option("--subnet", "subnet_id", help="Subnet (default: the default VPC's).")
@click.option(
    "--auto-stop", help="Power off after this long idle, e.g. 60m or 2h (shutdown behaviour: stop)."
)
@click.option("--auto-stop-grace", default="10m", show_default=True, help="Warning on the desktop before.")
@click.option("--no-wait", is_flag=True, help="Return as soon as the instance is running.")
@click.option("--allow-no-gpu", is_flag=True, help="Accept a type without a GPU for a GPU image.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check everything, incl. EC2's own DryRun and the GPU quota; create nothing.",
)
@click.option(
    "--timeout",
    "timeout_min",
    type=float,
    default=20,
    show_default=True,
    help="Minutes to wait for the desktop line on the console.",
)
def launch(
    run,
    image,
    image_owners,
    instance_type,
    disk_gb,
    data_gb,
    data_volume_type,
    key_name,
    cidr,
    name,
    subnet_id,
    auto_stop,
    auto_stop_grace,
    no_wait,
    allow_no_gpu,
    dry_run,
    timeout_min,
):
    """Launch a workstation: GPU instance, security group for SSH and HTTPS, then its desktop URL."""
    request = lib.LaunchRequest(
        image=image,
        instance_type=instance_type,
        key_name=key_name,
        cidr=normalize_cidr(cidr) if cidr else "",
        name=name,
        disk_gb=disk_gb,
        data_volume_gb=data_gb,
        data_volume_type=data_volume_type,
        subnet_id=subnet_id,
        auto_stop_min=parse_minutes(auto_stop),
        auto_stop_grace_min=parse_minutes(auto_stop_grace, "--auto-stop-grace"),
        allow_no_gpu=allow_no_gpu,
        image_owners=tuple(image_owners),
    )
    lib.check_inputs(request)  # before any network call
    request.cidr = request.cidr or caller_cidr()
    plan = lib.prepare(run.aws, request)  # image, type, key pair, name, network, GPU quota: creates nothing
    if dry_run:
        result = lib.dry_run(run.aws, plan)
        run.out.emit(result, text="\n".join(f"{k}: {v}" for k, v in result["checks"].items()))
        return
    created = lib.Created()
    try:
        result = _launch_and_wait(run, plan, created, no_wait, timeout_min)
    except KeyboardInterrupt:
        raise Interrupted(_leftovers(run, plan, created), **created.as_dict()) from None
    run.out.emit(result, text=_desktop_text(result) or result["instance_id"])


def _leftovers(run, plan, created) -> str:
    prices = costs.load_table().regions.get(run.aws.region_name)
    hourly = prices.instances_per_hour.get(plan.request.instance_type) if prices else None
    gb = plan.request.disk_gb + plan.request.data_volume_gb
    per_gb = prices.ebs_per_gb_month.get("gp3") if prices else None
    return lib.leftovers(created, hourly, None if per_gb is None else gb * per_gb)


def _launch_and_wait(run, plan, created, no_wait: bool, timeout_min: float) -> dict:
    request = plan.request
    where = f"{run.aws.region_name}, ports 22/443 open to {request.cidr}"
    with run.out.status(f"launching {request.instance_type} from {request.image} in {where}"):
        result = lib.launch(run.aws, plan, created)
    run.out.info(f"{result['instance_id']} is running at {result['public_ip']}")
    if no_wait:
        return result
    ec2 = run.aws.ec2()
    with run.out.status("waiting for the first boot to publish the desktop (a few minutes)"):
        found = console.wait_for_desktop(
            lambda: console.read_console(ec2, result["instance_id"]), timeout_s=timeout_min * 60
        )
    if found is None:
        raise OperationFailed(
            f"no desktop line on {result['instance_id']}'s console after {timeout_min:g} min; "
            f"it is running ({result['ssh']}); try `scipioncloud desktop {result['instance_id']}` later",
            **{k: result[k] for k in ("instance_id", "name", "state", "public_ip", "ssh", "security_group")},
        )
    return result | {"desktop_url": found.url, "password": found.password}


@command(None, "instances")
@click.option("--all", "all_instances", is_flag=True, help="Every instance, not only ScipionCloud's.")
def instances(run, all_instances):
    """Our instances: state, type, uptime since the last start, on-demand cost so far."""
    region = run.aws.region_name
    table = costs.load_table()
    prices = table.regions.get(region)
    rows = lib.list_instances(run.aws, all_instances, prices.instances_per_hour.get if prices else None)
    run.out.table(
        rows,
        [
            ("instance_id", "instance"),
            ("name", "name"),
            ("state", "state"),
            ("type", "type"),
            ("public_ip", "address"),
            ("uptime_h", "uptime h"),
            ("cost_so_far", "cost so far $"),
        ],
        title=f"instances in {region} (prices: table of {table.as_of})",
    )


any_instance_option = click.option(
    "--any-instance", is_flag=True, help="Also act on an instance scipioncloud did not launch (no tag)."
)


@command(None, "stop")
@click.argument("instance")
@click.option("--no-wait", is_flag=True)
@any_instance_option
def stop(run, instance, no_wait, any_instance):
    """Stop INSTANCE (id or Name): disks stay and are billed, the instance hours stop."""
    with run.out.status(f"stopping {instance}"):
        result = lib.stop(run.aws, instance, wait=not no_wait, any_instance=any_instance)
    run.out.emit(result, text=f"{result['instance_id']}: {result['state']}")


@command(None, "start")
@click.argument("instance")
@click.option("--no-wait", is_flag=True)
def start(run, instance, no_wait):
    """Start a stopped INSTANCE (its public address usually changes)."""
    with run.out.status(f"starting {instance}"):
        result = lib.start(run.aws, instance, wait=not no_wait)
    run.out.emit(result, text=f"{result['instance_id']}: {result['state']} at {result['public_ip']}")


@command(None, "resize")
@click.argument("instance")
@click.option("--type", "instance_type", required=True, help="The new instance type.")
@click.option(
    "--allow-no-gpu", is_flag=True, help="Accept a type without a GPU for a GPU image (CPU-only steps)."
)
@any_instance_option
def resize(run, instance, instance_type, allow_no_gpu, any_instance):
    """Change INSTANCE's type: stop, change, start (a stopped one stays stopped). Prints the new address."""
    result = lib.resize(
        run.aws,
        instance,
        instance_type,
        on_step=run.out.info,
        allow_no_gpu=allow_no_gpu,
        any_instance=any_instance,
    )
    text = f"{result['instance_id']}: {result['old_type']} -> {result['type']}, {result['state']}"
    if result.get("public_ip"):
        text += f"\naddress:  {result['public_ip']} (it changed: use `scipioncloud desktop` for the URL)"
        text += f"\nssh:      {result['ssh']}"
    run.out.emit(result, text=text)


@command(None, "terminate")
@click.argument("instance")
@click.option("--yes", is_flag=True, help="Terminate even though unsnapshotted data volumes will be deleted.")
@any_instance_option
def terminate(run, instance, yes, any_instance):
    """Terminate INSTANCE; refuses while a data volume that would be deleted has no snapshot. Says which
    volumes were deleted and which are kept, and what those still cost a month."""
    prices = costs.load_table().regions.get(run.aws.region_name)
    with run.out.status(f"terminating {instance}"):
        result = lib.terminate(
            run.aws,
            instance,
            yes=yes,
            any_instance=any_instance,
            per_gb_month=prices.ebs_per_gb_month if prices else None,
        )
    run.out.emit(result, text="\n".join(describe_terminated(result)))


def describe_terminated(result: dict) -> list[str]:
    lines = [f"{result['instance_id']}: terminated"]
    lines.append(f"deleted:  {', '.join(result['deleted_volumes']) or 'no volumes'}")
    for v in result["kept_and_billed"]:
        cost = "?" if v["monthly_cost"] is None else f"${v['monthly_cost']:.2f}"
        what = f"{v['volume_id']} ({v['device']}, {v['size_gb']} GB {v['type']})"
        lines.append(
            f"kept:     {what}, still billed {cost}/month"
            f" - `scipioncloud volumes delete {v['volume_id']}` when no longer needed"
        )
    if result["kept_monthly_cost"]:
        lines.append(f"kept volumes cost ${result['kept_monthly_cost']:.2f}/month in total")
    return lines


@command(None, "desktop")
@click.argument("instance")
def desktop(run, instance):
    """Print INSTANCE's desktop URL and password (from its console output)."""
    found = lib.desktop(run.aws, instance)
    if found is None:
        raise OperationFailed(
            f"{instance} has not published its desktop yet (first boot takes a few minutes); try again later"
        )
    run.out.emit(
        {"url": found.url, "password": found.password},
        text=f"desktop:  {found.url}\npassword: {found.password}",
    )


def ssh_options(f):
    """--key, --user and how to reach the instance when its public address is not the way in."""
    options = [
        click.option(
            "--key",
            type=click.Path(path_type=Path, dir_okay=False),
            help="SSH private key (default: ~/.ssh/KEYNAME.pem when present, else your ssh config).",
        ),
        click.option("--user", default="ubuntu", show_default=True, help="SSH user (sudo reads the token)."),
        click.option("--ssh-host", help="Address or ssh-config alias to use instead of the public address."),
        click.option("--ssh-port", type=int, default=22, show_default=True),
        click.option(
            "--ssh-option", "ssh_opts", multiple=True, metavar="KEY=VALUE", help="Passed as ssh -o."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _ssh_target(
    run,
    instance: str,
    key: Path | None,
    user: str,
    ssh_host: str | None = None,
    ssh_port: int = 22,
    ssh_opts: tuple[str, ...] = (),
) -> tunnel.SshTarget:
    found = lib.resolve(run.aws, instance)
    address = ssh_host or found.get("PublicIpAddress") or found.get("PublicDnsName")
    if not address:
        raise BadInput(f"{found['InstanceId']} has no public address (is it running?); or pass --ssh-host")
    if key is None and found.get("KeyName"):
        default = Path.home() / ".ssh" / f"{found['KeyName']}.pem"
        key = default if default.exists() else None
    for option in ssh_opts:
        if "=" not in option:
            raise BadInput(f"--ssh-option {option!r}: expected KEY=VALUE")
    return tunnel.SshTarget(
        host=address,
        user=user,
        key_file=key,
        port=ssh_port,
        options=("StrictHostKeyChecking=accept-new", *ssh_opts),
        sudo=user != "root",
    )


@command(None, "status")
@click.argument("instance")
@ssh_options
def status(run, instance, key, user, ssh_host, ssh_port, ssh_opts):
    """INSTANCE's agent summary (GPUs, pre-warm progress, idle) through an SSH tunnel."""
    target = _ssh_target(run, instance, key, user, ssh_host, ssh_port, ssh_opts)
    token = tunnel.read_token(target)
    with tunnel.open_tunnel(target) as url:
        summary = agent_client.AgentClient(url, token).summary()
    run.out.emit(summary, text="\n".join(agent_client.describe_summary(summary)))


@command(None, "access")
@click.argument("instance")
@click.option("--cidr", help="Address block to allow (default: your public address/32).")
@click.option("--remove-old", is_flag=True, help="Close SSH and the desktop to every other address.")
def access(run, instance, cidr, remove_old):
    """Open INSTANCE's SSH and desktop to where you are now (lab, home, VPN); --remove-old closes them to
    the addresses you had before."""
    cidr = normalize_cidr(cidr) if cidr else caller_cidr()
    result = access_lib.allow(run.aws, instance, cidr, remove_old=remove_old)
    lines = [f"{result['instance_id']} ({result['security_group']}):"]
    lines.append(f"  added {result['added']}" if result["added"] else f"  {cidr} was already allowed")
    lines += [f"  removed {c}" for c in result["removed"]]
    lines += [f"  port {port} open to {', '.join(c) or 'nobody'}" for port, c in result["allowed"].items()]
    run.out.emit(result, text="\n".join(lines))


COMMANDS = [launch, instances, stop, start, resize, terminate, desktop, status, access]
