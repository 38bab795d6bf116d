"""AWS ParallelCluster 3 (Slurm) configuration for Scipion, from our images and the operator's choices.

What it builds (keys as in ParallelCluster 3's cluster configuration file):
- HeadNode: a small CPU instance (slurmctld; no Scipion work there).
- LoginNodes: one pool on the scipion-desktop image: the desktop where Scipion's GUI runs, set up by
  ParallelCluster itself as a Slurm submit host with the shared storage mounted (no hand-made munge or
  slurm.conf copies).
- Scheduling.SlurmQueues: one queue per GPU instance type and per CPU instance type, MinCount 0 so the
  cluster costs nothing when idle, and a Spot twin of every GPU queue (`<name>-spot`). Memory-based scheduling
  is on and SchedulableMemory is written explicitly (95 % of EC2's memory, ParallelCluster's own floor), so
  Scipion's --mem meets a known Slurm RealMemory.
- SharedStorage: FSx for Lustre or EFS mounted at the folder where Scipion projects live.
- Tags: scipioncloud:cluster (cost allocation) plus the operator's.
The result is checked with aws-parallelcluster's own schema (its marshmallow schema and the validators that
run on load) in the interpreter of the `pcluster` command, which lives in its own environment."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agent.scipion_hosts.queues import SPOT_SUFFIX, Queue
from scipioncloud.errors import BadInput, OperationFailed

PCLUSTER_VERSION = "3.16.1"
# ParallelCluster's own floor for SchedulableMemory (validators/cluster_validators.py: 0.95 * EC2 memory).
SCHEDULABLE_MEMORY_SHARE = 0.95
STORAGE_TYPES = {"fsx": "FsxLustre", "efs": "Efs"}
_QUEUE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,24}$")  # ParallelCluster: lower case, digits, hyphens, <= 25


@dataclass(frozen=True)
class QueueChoice:
    instance_type: str
    max_count: int = 4
    gpu: bool = True

    @classmethod
    def parse(cls, text: str, gpu: bool) -> QueueChoice:
        """`g5.2xlarge` or `g5.2xlarge:8` (max nodes)."""
        instance_type, _, count = text.partition(":")
        if count and not count.isdigit():
            raise BadInput(
                f"queue {text!r}: write INSTANCE_TYPE or INSTANCE_TYPE:MAX_NODES, e.g. g5.2xlarge:8"
            )
        return cls(instance_type, int(count) if count else 4, gpu)

    @property
    def name(self) -> str:
        return self.instance_type.replace(".", "-").lower()


@dataclass
class ClusterChoices:
    name: str
    region: str
    subnet_id: str
    key_name: str
    compute_ami: str
    desktop_ami: str | None = None
    head_node_type: str = "c6i.xlarge"
    desktop_type: str = "g4dn.xlarge"
    os: str = "ubuntu2204"
    gpu_queues: list[QueueChoice] = field(default_factory=list)
    cpu_queues: list[QueueChoice] = field(default_factory=list)
    spot_twins: bool = True
    storage: str = "fsx"  # fsx | efs | none
    storage_gb: int = 1200
    projects_dir: str = "/data"
    tags: dict[str, str] = field(default_factory=dict)


def _memory_mib(description: dict) -> int:
    return int(description["MemoryInfo"]["SizeInMiB"])


def _gpus(description: dict) -> tuple[int, tuple[str, ...]]:
    gpus = description.get("GpuInfo", {}).get("Gpus", [])
    count = sum(int(g.get("Count", 0)) for g in gpus if g.get("Manufacturer") == "NVIDIA")
    names = tuple(g.get("Name", "").lower() for g in gpus if g.get("Manufacturer") == "NVIDIA")
    return count, names


def schedulable_memory(description: dict) -> int:
    return math.floor(SCHEDULABLE_MEMORY_SHARE * _memory_mib(description))


def _check_choices(choices: ClusterChoices) -> None:
    if choices.storage not in STORAGE_TYPES:
        raise BadInput(
            "Scipion projects must live on storage that the head node, the compute nodes and the desktop all "
            f"mount: choose --storage fsx (FSx for Lustre) or --storage efs, not {choices.storage!r}"
        )
    if not choices.gpu_queues and not choices.cpu_queues:
        raise BadInput(
            "a cluster needs at least one queue: --gpu-queue g5.2xlarge:4 and/or --cpu-queue c6i.8xlarge"
        )
    names = [q.name for q in choices.gpu_queues + choices.cpu_queues]
    if len(set(names)) != len(names):
        raise BadInput(f"each instance type may back one queue only: {', '.join(names)}")
    for queue in choices.gpu_queues + choices.cpu_queues:
        twin = f"{queue.name}{SPOT_SUFFIX}"
        if not _QUEUE_NAME.match(twin if queue.gpu and choices.spot_twins else queue.name):
            raise BadInput(
                f"queue name {queue.name!r} is too long or malformed for ParallelCluster (<= 25, a-z0-9-)"
            )
        if queue.max_count < 1:
            raise BadInput(f"queue {queue.name}: MAX_NODES must be at least 1")
    if choices.storage == "fsx" and not (
        choices.storage_gb == 1200 or choices.storage_gb % 2400 == 0 < choices.storage_gb
    ):
        raise BadInput(
            "FSx for Lustre (SCRATCH_2) holds 1200 GiB or a multiple of 2400 GiB: --storage-gb 1200"
        )


def _queue(choices: ClusterChoices, queue: QueueChoice, description: dict, *, spot: bool) -> dict:
    resource = {
        "Name": queue.name[:25],
        "Instances": [{"InstanceType": queue.instance_type}],
        "MinCount": 0,  # scale from zero: no node, no cost
        "MaxCount": queue.max_count,
        "SchedulableMemory": schedulable_memory(description),
    }
    return {
        "Name": f"{queue.name}{SPOT_SUFFIX}" if spot else queue.name,
        "CapacityType": "SPOT" if spot else "ONDEMAND",
        "ComputeResources": [resource],
        "Networking": {"SubnetIds": [choices.subnet_id]},
        "Image": {"CustomAmi": choices.compute_ami},
    }


def build(choices: ClusterChoices, describe: Callable[[str], dict]) -> dict:
    """The ParallelCluster configuration as a dict. `describe(type)` returns EC2's description of an instance
    type (scipioncloud.instance_types.describe) and raises BadInput for a type the region does not offer."""
    _check_choices(choices)
    queues = []
    for queue in choices.gpu_queues:
        description = describe(queue.instance_type)
        if _gpus(description)[0] == 0:
            raise BadInput(
                f"GPU queue {queue.name}: {queue.instance_type} has no NVIDIA GPU; use a GPU type "
                "(g4dn, g5, g6, p4d, ...) or move it to --cpu-queue"
            )
        queues.append(_queue(choices, queue, description, spot=False))
        if choices.spot_twins:
            queues.append(_queue(choices, queue, description, spot=True))
    for queue in choices.cpu_queues:
        queues.append(_queue(choices, queue, describe(queue.instance_type), spot=False))
    describe(choices.head_node_type)

    storage_type = STORAGE_TYPES[choices.storage]
    storage: dict = {
        "MountDir": choices.projects_dir,
        "Name": "scipion-projects",
        "StorageType": storage_type,
    }
    if storage_type == "FsxLustre":
        storage["FsxLustreSettings"] = {"StorageCapacity": choices.storage_gb, "DeploymentType": "SCRATCH_2"}
    else:
        storage["EfsSettings"] = {"Encrypted": True, "PerformanceMode": "generalPurpose"}

    config: dict = {
        "Region": choices.region,
        "Image": {"Os": choices.os, "CustomAmi": choices.compute_ami},
        "Imds": {"ImdsSupport": "v2.0"},
        "HeadNode": {
            "InstanceType": choices.head_node_type,
            "Networking": {"SubnetId": choices.subnet_id},
            "Ssh": {"KeyName": choices.key_name},
            "Imds": {"Secured": True},
        },
        "Scheduling": {
            "Scheduler": "slurm",
            "SlurmSettings": {"EnableMemoryBasedScheduling": True, "ScaledownIdletime": 10},
            "SlurmQueues": queues,
        },
        "SharedStorage": [storage],
        "Tags": [{"Key": "scipioncloud:cluster", "Value": choices.name}]
        + [{"Key": k, "Value": v} for k, v in sorted(choices.tags.items())],
    }
    if choices.desktop_ami:
        describe(choices.desktop_type)
        config["LoginNodes"] = {
            "Pools": [
                {
                    "Name": "desktop",
                    "InstanceType": choices.desktop_type,
                    "Count": 1,
                    "Image": {"CustomAmi": choices.desktop_ami},
                    "Networking": {"SubnetIds": [choices.subnet_id]},
                }
            ]
        }
    return config


def scipion_queues(config: dict, describe: Callable[[str], dict]) -> list[Queue]:
    """The Scipion queues a configuration will offer (for hosts.conf before the cluster exists)."""
    queues = []
    for queue in config["Scheduling"]["SlurmQueues"]:
        resource = queue["ComputeResources"][0]
        description = describe(resource["Instances"][0]["InstanceType"])
        gpus, names = _gpus(description)
        cpus = int(description["VCpuInfo"]["DefaultVCpus"])
        memory = int(resource.get("SchedulableMemory") or schedulable_memory(description))
        queues.append(
            Queue(
                name=queue["Name"],
                cpus_min=cpus,
                cpus_max=cpus,
                memory_mb_min=memory,
                memory_mb_max=memory,
                gpus_min=gpus,
                gpus_max=gpus,
                gpu_types=tuple(dict.fromkeys(names)),
                memory_mb_per_gpu=memory // gpus if gpus else 0,
                default=queue is config["Scheduling"]["SlurmQueues"][0],
                spot=queue.get("CapacityType") == "SPOT",
            )
        )
    return queues


def to_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


# Runs in pcluster's interpreter: load the YAML with ParallelCluster's ClusterSchema (structure, allowed
# values and the cross-field rules its schema applies on load) and report errors as JSON.
_VALIDATE = """
import json, sys, yaml
from marshmallow import ValidationError
from pcluster.schemas.cluster_schema import ClusterSchema
data = yaml.safe_load(open(sys.argv[1]))
try:
    ClusterSchema(cluster_name=sys.argv[2]).load(data)
except ValidationError as exc:
    print(json.dumps({"errors": exc.messages})); sys.exit(0)
print(json.dumps({"errors": None}))
"""


def pcluster_python(pcluster: Path) -> Path:
    """The interpreter of a `pcluster` console script (its shebang): where aws-parallelcluster imports."""
    first = Path(pcluster).read_text(errors="replace").splitlines()[0]
    if not first.startswith("#!"):
        raise OperationFailed(f"{pcluster} is not the pcluster console script (no #! line)")
    return Path(first[2:].strip().split()[0])


def validate(config_path: Path, cluster_name: str, pcluster: Path, region: str) -> None:
    """Check the file with aws-parallelcluster's own schema; BadInput with its messages when it refuses."""
    env = {"AWS_DEFAULT_REGION": region, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(pcluster_python(pcluster)), "-c", _VALIDATE, str(config_path), cluster_name],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise OperationFailed(
            f"aws-parallelcluster's schema check could not run: {result.stderr.strip()[-2000:]}"
        )
    errors = json.loads(result.stdout.strip().splitlines()[-1])["errors"]
    if errors:
        raise BadInput(f"ParallelCluster refuses the configuration: {json.dumps(errors)}")
