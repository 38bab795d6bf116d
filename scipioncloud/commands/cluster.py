"""`scipioncloud cluster ...`: ParallelCluster configuration and lifecycle, Scipion's hosts.conf, the
per-queue check."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from agent.scipion_hosts import hostsconf, live
from scipioncloud import instance_types
from scipioncloud.cluster import check as check_lib
from scipioncloud.cluster import parallelcluster, pcluster_cli
from scipioncloud.commands.common import command
from scipioncloud.errors import BadInput, OperationFailed


@click.group()
def cluster() -> None:
    """Scipion on a Slurm cluster: AWS ParallelCluster or a lab's own Slurm."""


COMMANDS = [cluster]


def _pcluster_option(f):
    return click.option(
        "--pcluster",
        "pcluster",
        type=click.Path(path_type=Path, dir_okay=False),
        help="The pcluster command (default: $PCLUSTER or PATH).",
    )(f)


@command(cluster, "config")
@click.argument("name")
@click.option("--subnet", "subnet_id", required=True, help="Subnet for every node (same AZ as the storage).")
@click.option("--key", "key_name", required=True, help="EC2 key pair for the head node.")
@click.option("--compute-ami", required=True, help="scipion-compute AMI (built on ParallelCluster's base).")
@click.option("--desktop-ami", help="scipion-desktop AMI for the login node (where Scipion's GUI runs).")
@click.option(
    "--gpu-queue", "gpu_queues", multiple=True, metavar="TYPE[:MAX]", help="GPU queue (repeatable)."
)
@click.option(
    "--cpu-queue", "cpu_queues", multiple=True, metavar="TYPE[:MAX]", help="CPU queue (repeatable)."
)
@click.option("--head-node-type", default="c6i.xlarge", show_default=True)
@click.option("--desktop-type", default="g4dn.xlarge", show_default=True)
@click.option("--no-spot", is_flag=True, help="No Spot twin of each GPU queue.")
@click.option("--storage", type=click.Choice(["fsx", "efs", "none"]), default="fsx", show_default=True)
@click.option("--storage-gb", type=int, default=1200, show_default=True, help="FSx for Lustre capacity.")
@click.option("--projects-dir", default="/data", show_default=True, help="Where Scipion projects live.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Extra cost tag (repeatable).")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--hosts-conf", type=click.Path(path_type=Path, dir_okay=False), help="Also write hosts.conf.")
@_pcluster_option
def config(run, name, subnet_id, key_name, compute_ami, desktop_ami, gpu_queues, cpu_queues,
           head_node_type, desktop_type, no_spot, storage, storage_gb, projects_dir, tags, out_path,
           hosts_conf, pcluster):  # fmt: skip
    """Write a ParallelCluster 3 configuration and check it with aws-parallelcluster's own schema."""
    extra = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise BadInput(f"--tag {tag!r}: write KEY=VALUE")
        extra[key] = value
    ec2 = run.aws.ec2()
    choices = parallelcluster.ClusterChoices(
        name=name,
        region=ec2.meta.region_name,
        subnet_id=subnet_id,
        key_name=key_name,
        compute_ami=compute_ami,
        desktop_ami=desktop_ami,
        head_node_type=head_node_type,
        desktop_type=desktop_type,
        gpu_queues=[parallelcluster.QueueChoice.parse(q, gpu=True) for q in gpu_queues],
        cpu_queues=[parallelcluster.QueueChoice.parse(q, gpu=False) for q in cpu_queues],
        spot_twins=not no_spot,
        storage=storage,
        storage_gb=storage_gb,
        projects_dir=projects_dir,
        tags=extra,
    )
    cache: dict[str, dict] = {}

    def describe(instance_type: str) -> dict:
        if instance_type not in cache:
            cache[instance_type] = instance_types.describe(ec2, instance_type)
        return cache[instance_type]

    built = parallelcluster.build(choices, describe)
    text = parallelcluster.to_yaml(built)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "cluster.yaml"
        candidate.write_text(text)
        parallelcluster.validate(candidate, name, pcluster_cli.find(pcluster), choices.region)
    out_path.write_text(text)
    offered = parallelcluster.scipion_queues(built, describe)
    if hosts_conf:
        hosts_conf.write_text(hostsconf.render(offered))
    run.out.emit(
        {"config": str(out_path), "queues": [q["Name"] for q in built["Scheduling"]["SlurmQueues"]]},
        text=f"wrote {out_path} (checked by aws-parallelcluster "
        f"{parallelcluster.PCLUSTER_VERSION}'s schema); queues: {', '.join(q.name for q in offered)}",
    )


@command(cluster, "create")
@click.argument("name")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option("--dryrun", is_flag=True, help="Let pcluster validate against AWS without creating anything.")
@click.option(
    "--suppress-validator", "suppress", multiple=True, metavar="TYPE", help="pcluster validator to skip."
)
@_pcluster_option
def create(run, name, config_path, dryrun, suppress, pcluster):
    """Create the cluster with pcluster create-cluster (every ParallelCluster validator runs first)."""
    found = pcluster_cli.find(pcluster)
    region = run.aws.region_name
    argv = pcluster_cli.create_argv(found, name, config_path, region, dryrun=dryrun, suppress=suppress)
    answer = pcluster_cli.run(argv)
    run.out.emit(answer, text=answer.get("message") or f"creating {name}: scipioncloud cluster status {name}")


@command(cluster, "status")
@click.argument("name")
@_pcluster_option
def status(run, name, pcluster):
    """The cluster's state (pcluster describe-cluster)."""
    answer = pcluster_cli.run(
        pcluster_cli.describe_argv(pcluster_cli.find(pcluster), name, run.aws.region_name)
    )
    text = f"{name}: {answer.get('clusterStatus')} (fleet {answer.get('computeFleetStatus')})"
    run.out.emit(answer, text=text)


@command(cluster, "delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@_pcluster_option
def delete(run, name, yes, pcluster):
    """Delete the cluster (pcluster delete-cluster): every node and the FSx/EFS it created. Back up first."""
    if not yes and not click.confirm(f"Delete cluster {name} and the shared storage it created?"):
        raise BadInput("not deleted")
    answer = pcluster_cli.run(
        pcluster_cli.delete_argv(pcluster_cli.find(pcluster), name, run.aws.region_name)
    )
    run.out.emit(answer, text=f"deleting {name}")


@command(cluster, "hosts-conf", aws=False)
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--wait", "wait_s", type=float, default=0, show_default=True,
              help="Seconds to keep trying while Slurm does not answer.")  # fmt: skip
def hosts_conf(run, out_path, wait_s):
    """Write Scipion's hosts.conf from this machine's Slurm (scontrol show partition/node)."""
    try:
        written = live.write_from_slurm(out_path, wait_s=wait_s)
    except live.SlurmUnreachable as exc:
        raise OperationFailed(f"{exc}: run this on a machine that can submit to the cluster") from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    names = ", ".join(q.name for q in written.queues)
    data = {"hosts_conf": str(out_path), "queues": [q.name for q in written.queues]}
    data["changed"] = written.changed
    run.out.emit(data, text=f"{'wrote' if written.changed else 'unchanged:'} {out_path}: queues {names}")


CHECK_COLUMNS = [
    ("queue", "queue"),
    ("status", "status"),
    ("node", "node"),
    ("gpus_asked", "GPUs asked"),
    ("gpus_granted", "granted"),
    ("wait_s", "submit->start s"),
    ("run_s", "start->finish s"),
    ("total_s", "total s"),
]


@command(cluster, "check", aws=False)
@click.option("--scipion", type=click.Path(path_type=Path, dir_okay=False), default=check_lib.DEFAULT_SCIPION,
              show_default=True, help="Scipion's launcher (or its Python).")  # fmt: skip
@click.option(
    "--queue", "queue_names", multiple=True, metavar="QUEUE[:GPUS]", help="Only these (default: all)."
)
@click.option(
    "--timeout", type=float, default=900, show_default=True, help="Seconds to wait (nodes may boot)."
)
def check(run, scipion, queue_names, timeout):
    """Run a tiny Scipion protocol on every queue; per queue: times and GPUs granted."""
    with run.out.status("running the check protocol on every queue"):
        rows = check_lib.run_check(scipion, queues=list(queue_names), timeout=timeout, env=dict(os.environ))
    run.out.table(rows, CHECK_COLUMNS, title="Scipion queues", data={"queues": rows})
    failed = [r["queue"] for r in rows if r["status"] != "finished" or not r["gpus_ok"]]
    if failed:
        raise OperationFailed(f"queues that did not pass: {', '.join(failed)}")
