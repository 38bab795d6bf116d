"""What a Slurm partition offers one Scipion job, read from `scontrol show partition -o` and
`scontrol show node -o` (one record per line, `Key=Value` fields), or built from a cluster definition.

A Scipion job runs on one node (--nodes=1), so what matters per partition is what its nodes can give one
job: the smallest node sets the default (a job that fits there fits everywhere) and the largest sets the limit
(anything above is refused by Slurm at submission)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A field starts at a space followed by `Key=`; values may contain spaces (OS=Linux 6.1.0 ..., Reason=...).
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)=")
# A Spot queue's name ends so (scipioncloud cluster config names the Spot twin of queue `gpu` `gpu-spot`): a
# live partition says nothing else about its capacity type.
SPOT_SUFFIX = "-spot"


@dataclass(frozen=True)
class Queue:
    """One Slurm partition as Scipion's queue dialog presents it. Memory in MB (Slurm's unit)."""

    name: str
    cpus_min: int
    cpus_max: int
    memory_mb_min: int
    memory_mb_max: int
    gpus_min: int = 0
    gpus_max: int = 0
    gpu_types: tuple[str, ...] = ()
    memory_mb_per_gpu: int = 0  # the smallest node memory / GPUs ratio: a one-GPU share that fits anywhere
    max_time_hours: int | None = None  # None: no limit
    default: bool = False
    spot: bool = False  # nodes may be reclaimed: jobs ask Slurm to requeue them (hostsconf.JOB_REQUEUE)
    nodes: tuple[str, ...] = field(default=())

    @property
    def has_gpus(self) -> bool:
        return self.gpus_max > 0


def parse_records(text: str) -> list[dict[str, str]]:
    """`scontrol show ... -o` output -> one dict per line."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line or "=" not in line:
            continue
        matches = list(_FIELD.finditer(line))
        record = {}
        for i, match in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
            record[match.group(1)] = line[match.end() : end].strip()
        records.append(record)
    return records


def parse_gres(gres: str) -> tuple[int, tuple[str, ...]]:
    """`gpu:tesla:2(S:0),gpu:1,shard:4` -> (3, ("tesla",)); `(null)` -> (0, ())."""
    count, types = 0, []
    for item in gres.split(","):
        item = re.sub(r"\(.*?\)", "", item).strip()
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        number = parts[-1]
        if not number.isdigit():
            continue
        count += int(number)
        if len(parts) == 3 and parts[1] not in types:
            types.append(parts[1])
    return count, tuple(types)


def parse_time_hours(value: str) -> int | None:
    """Slurm time limit (`UNLIMITED`, `30`, `2:00:00`, `1-12:00:00`) -> whole hours (None: no limit)."""
    value = value.strip()
    if value in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        hours = int(days) * 24 + parts[0]
    elif len(parts) == 3:  # hours:minutes:seconds
        hours = parts[0]
    else:  # minutes[:seconds]
        hours = parts[0] // 60
    return hours


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def from_scontrol(partitions_text: str, nodes_text: str) -> list[Queue]:
    """The queues of a live cluster: partitions that are UP, each with the nodes that list it."""
    nodes = parse_records(nodes_text)
    queues = []
    for partition in parse_records(partitions_text):
        name = partition.get("PartitionName")
        if not name or partition.get("State", "UP") != "UP":
            continue
        members = [n for n in nodes if name in n.get("Partitions", "").split(",")]
        if not members:
            continue
        cap = partition.get("MaxMemPerNode", "UNLIMITED")
        memory = [_int(n.get("RealMemory"), 1) for n in members]
        if cap.isdigit():
            memory = [min(m, int(cap)) for m in memory]
        cpus = [_int(n.get("CPUTot") or n.get("CPUEfctv"), 1) for n in members]
        gres = [parse_gres(n.get("Gres", "(null)")) for n in members]
        types = tuple(dict.fromkeys(t for _, ts in gres for t in ts))
        queues.append(
            Queue(
                name=name,
                cpus_min=min(cpus),
                cpus_max=max(cpus),
                memory_mb_min=min(memory),
                memory_mb_max=max(memory),
                gpus_min=min(g for g, _ in gres),
                gpus_max=max(g for g, _ in gres),
                gpu_types=types,
                memory_mb_per_gpu=min(
                    (m // g for m, (g, _) in zip(memory, gres, strict=True) if g), default=0
                ),
                max_time_hours=parse_time_hours(partition.get("MaxTime", "UNLIMITED")),
                default=partition.get("Default", "NO") == "YES",
                spot=name.endswith(SPOT_SUFFIX),
                nodes=tuple(n["NodeName"] for n in members if "NodeName" in n),
            )
        )
    if not queues:
        raise ValueError("Slurm reports no partition that is UP and has nodes; check `sinfo` on this machine")
    return queues


def from_list(items: list[dict]) -> list[Queue]:
    """Queues written by hand (the scipion role's scipion_slurm_queues): one dict per partition with name,
    cpus, memory_mb (per node, Slurm's RealMemory), gpus (per node), gpu_type, max_time_hours, default,
    spot (its nodes may be reclaimed; default: the name ends in -spot)."""
    queues = []
    for item in items:
        missing = {"name", "cpus", "memory_mb"} - set(item)
        if missing:
            raise ValueError(f"queue {item}: missing {', '.join(sorted(missing))}")
        gpus = int(item.get("gpus", 0))
        memory = int(item["memory_mb"])
        hours = item.get("max_time_hours")
        queues.append(
            Queue(
                name=str(item["name"]),
                cpus_min=int(item["cpus"]),
                cpus_max=int(item["cpus"]),
                memory_mb_min=memory,
                memory_mb_max=memory,
                gpus_min=gpus,
                gpus_max=gpus,
                gpu_types=(str(item["gpu_type"]),) if item.get("gpu_type") else (),
                memory_mb_per_gpu=memory // gpus if gpus else 0,
                max_time_hours=int(hours) if hours not in (None, "") else None,
                default=bool(item.get("default", False)),
                spot=bool(item.get("spot", str(item["name"]).endswith(SPOT_SUFFIX))),
            )
        )
    return queues
