"""HTTP routes for EBS volumes: discovery, pre-warming, formatting and mounting (docs/volumes.md)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Flask, current_app, jsonify
from prometheus_client.core import GaugeMetricFamily, Metric

from agent import aws_volumes, collectors, inflight, services, shell
from agent.config import DEFAULT_MOUNT_FORMAT, Config
from agent.errors import ApiError, error_response, json_body
from agent.openapi import operation
from agent.volumes import blockdev, mounts
from agent.volumes.prewarm import PrewarmManager

bp = Blueprint("volumes", __name__)
EXTENSION = "scipioncloud.prewarm"

STR = {"type": "string"}
INT = {"type": "integer"}
NULLABLE_STR = {"type": "string", "nullable": True}
NUMBER_OR_NULL = {"type": "number", "nullable": True}
SIGNATURE = {"type": "object", "nullable": True, "additionalProperties": STR}
MOUNT_BODY = {
    "type": "object",
    "required": ["mountpoint"],
    "additionalProperties": False,
    "properties": {
        "mountpoint": {
            "type": "string",
            "pattern": "^/",
            "maxLength": mounts.PATH_MAX - 1,
            "description": "absolute, under one of storage.mount_roots, no control characters",
        },
        "fstype": {"type": "string", "enum": list(mounts.FSTYPES), "default": "ext4"},
        "format": {"type": "string", "enum": list(mounts.FORMATS), "default": DEFAULT_MOUNT_FORMAT},
        "label": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,16}$", "description": "xfs: 12 at most"},
    },
}
PREWARM_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "force": {"type": "boolean", "default": False},
        "read_all": {
            "type": "boolean",
            "default": False,
            "description": "read every block, not only those the filesystem uses (storage.prewarm_used_only)",
        },
    },
}
VOLUME = {
    "type": "object",
    "required": ["id", "name", "path", "size", "type", "state", "signature", "mountpoints", "partitions"],
    "properties": {
        "id": STR,
        "name": STR,
        "path": STR,
        "size": INT,
        "type": STR,
        "model": NULLABLE_STR,
        "volume_id": NULLABLE_STR,
        "state": {
            "type": "string",
            "enum": ["root", "mounted", "unknown", "partitioned", "formatted", "blank"],
        },
        "reason": NULLABLE_STR,
        "signature": SIGNATURE,
        "mountpoints": {"type": "array", "items": STR},
        "partitions": {"type": "array", "items": {"type": "object"}},
        "prewarm": {"type": "object", "nullable": True},
    },
}
JOB = {
    "type": "object",
    "required": ["id", "volume", "device", "state", "bytes_done", "bytes_total", "percent"],
    "properties": {
        "id": STR,
        "volume": STR,
        "device": STR,
        "state": {
            "type": "string",
            "enum": ["queued", "running", "done", "skipped", "cancelled", "failed", "stopped"],
        },
        "bytes_done": INT,
        "bytes_total": INT,
        "percent": {"type": "number"},
        "mb_s": NUMBER_OR_NULL,
        "eta_s": NUMBER_OR_NULL,
        "resumed_from": INT,
        "read_all": {"type": "boolean"},
        "reason": NULLABLE_STR,
        "error": NULLABLE_STR,
        "aws": {"type": "object", "nullable": True},
        "started": {"type": "number"},
        "finished": NUMBER_OR_NULL,
    },
}
MOUNTED = {
    "type": "object",
    "required": ["volume", "device", "mountpoint", "formatted", "fstab_changed"],
    "properties": {
        "volume": STR,
        "device": STR,
        "mountpoint": STR,
        "fstype": NULLABLE_STR,
        "uuid": NULLABLE_STR,
        "formatted": {"type": "boolean"},
        "fstab_changed": {"type": "boolean"},
    },
}
UNMOUNTED = {
    "type": "object",
    "required": ["volume", "device", "unmounted", "fstab_changed"],
    "properties": {
        "volume": STR,
        "device": STR,
        "unmounted": {"type": "array", "items": STR},
        "fstab_changed": {"type": "boolean"},
    },
}
TOOL_FAILED = "a system tool (lsblk, blkid, findmnt...) failed or is missing"

OPENAPI = {
    "/v1/volumes": {
        "get": operation(
            "Block devices: path, size, EBS volume id, signature, mountpoints, state",
            schema={
                "type": "object",
                "required": ["volumes"],
                "properties": {"volumes": {"type": "array", "items": VOLUME}},
            },
            _200="the devices",
            _503=TOOL_FAILED,
        )
    },
    "/v1/volumes/{vol}/prewarm": {
        "post": operation(
            "Start (or resume from its checkpoint) pre-warming a volume; vol = EBS volume id or device name",
            body=PREWARM_BODY,
            schema=JOB,
            _200="an active or finished job for this volume",
            _202="job started",
            _404="no such volume",
            _409="the root device",
            _503=TOOL_FAILED,
        )
    },
    "/v1/prewarm": {
        "get": operation(
            "All pre-warm jobs with progress",
            schema={
                "type": "object",
                "required": ["jobs"],
                "properties": {"jobs": {"type": "array", "items": JOB}},
            },
            _200="the jobs",
        )
    },
    "/v1/prewarm/{job}": {
        "get": operation(
            "One pre-warm job: bytes done/total, percent, MB/s, ETA, state",
            schema=JOB,
            _200="the job",
            _404="no such job",
        ),
        "delete": operation(
            "Cancel a pre-warm job (its checkpoint is kept)",
            schema=JOB,
            _200="the job, cancelled",
            _404="no such job",
        ),
    },
    "/v1/volumes/{vol}/mount": {
        "post": operation(
            "Mount a volume (format it only if proven blank and format=if-blank) and add its fstab line",
            body=MOUNT_BODY,
            body_required=True,
            schema=MOUNTED,
            _200="mounted",
            _400="bad mountpoint, fstype, format or label",
            _404="no such volume",
            _409="not proven blank / not a filesystem / root / in use / a file in the way; nothing changed",
            _503=TOOL_FAILED,
        )
    },
    "/v1/volumes/{vol}/unmount": {
        "post": operation(
            "Unmount a volume and remove the agent's fstab line",
            schema=UNMOUNTED,
            _200="unmounted",
            _404="no such volume",
            _409="busy (names the processes), root, or the fstab edit would be refused; nothing changed",
            _503=TOOL_FAILED + ", or fstab changed between the check and the edit",
        )
    },
}


@bp.errorhandler(shell.CommandError)
def _tool_failed(exc: shell.CommandError):
    # lsblk, blkid, findmnt... failing is the machine's problem, not the request's: say which tool and why.
    return error_response(503, f"{exc.argv[0]} failed: {exc.stderr}; check that util-linux is installed")


def init_app(app: Flask, config: Config) -> None:
    manager = PrewarmManager(
        config.storage,
        inflight=inflight.registry(app),
        aws_status=lambda volume_id: aws_volumes.initialization_status(
            volume_id, timeout=config.storage.aws_timeout_s, imds_url=config.host.imds_url
        ),
    )
    app.extensions[EXTENSION] = manager
    services.register(app, "prewarm", manager)
    collectors.register(app, "prewarm", collect_metrics)


def collect_metrics(app: Flask) -> tuple[Iterator[Metric], bool]:
    """Pre-warm progress for /metrics: the latest job of each volume, read from memory (no device probe)."""
    manager: PrewarmManager | None = app.extensions.get(EXTENSION)
    latest = {}
    for job in manager.list() if manager else []:
        latest[job["volume"]] = job  # jobs are listed in start order: the last one wins
    labels = ["volume", "device"]
    done = GaugeMetricFamily(
        "scipioncloud_prewarm_bytes_done", "Bytes of the volume read so far", labels=labels
    )
    total = GaugeMetricFamily(
        "scipioncloud_prewarm_size_bytes", "Size of the volume being pre-warmed", labels=labels
    )
    rate = GaugeMetricFamily(
        "scipioncloud_prewarm_read_bytes_per_second", "Recent pre-warm read rate", labels=labels
    )
    state = GaugeMetricFamily(
        "scipioncloud_prewarm_state",
        "1 for the state of the volume's latest pre-warm job",
        labels=[*labels, "state"],
    )
    for job in latest.values():
        key = [job["volume"], job["device"]]
        done.add_metric(key, job["bytes_done"])
        total.add_metric(key, job["bytes_total"])
        if job["mb_s"] is not None and job["state"] == "running":
            rate.add_metric(key, job["mb_s"] * 1e6)
        state.add_metric([*key, job["state"]], 1.0)
    return iter([done, total, rate, state]), True


def _storage():
    return current_app.config["SCIPIONCLOUD"].storage


def _manager() -> PrewarmManager:
    return current_app.extensions[EXTENSION]


@bp.get("/v1/volumes")
def list_volumes():
    manager = _manager()
    volumes = []
    for device in blockdev.discover(_storage()):
        item = device.to_json()
        checkpoint = manager.store.load(device.identity)
        item["prewarm"] = (
            {"state": checkpoint.state, "bytes_done": checkpoint.done, "reason": checkpoint.reason}
            if checkpoint
            else None
        )
        volumes.append(item)
    return jsonify(volumes=volumes)


@bp.post("/v1/volumes/<vol>/prewarm")
def start_prewarm(vol: str):
    body = json_body()
    unknown = set(body) - {"force", "read_all"}
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    force, read_all = body.get("force", False), body.get("read_all", False)
    if not isinstance(force, bool) or not isinstance(read_all, bool):
        raise ApiError(400, "force and read_all must be true or false")
    device = blockdev.find(_storage(), vol)
    manager = _manager()
    existing = manager.active_for(device.identity)
    job = manager.start_job(device, force=force, read_all=read_all)
    status = 200 if existing is not None or job.state in ("done", "skipped") else 202
    return jsonify(job.to_json()), status


@bp.get("/v1/prewarm")
def list_prewarm():
    return jsonify(jobs=_manager().list())


@bp.get("/v1/prewarm/<job>")
def get_prewarm(job: str):
    return jsonify(_manager().get(job).to_json())


@bp.delete("/v1/prewarm/<job>")
def cancel_prewarm(job: str):
    return jsonify(_manager().cancel(job).to_json())


@bp.post("/v1/volumes/<vol>/mount")
def mount_volume(vol: str):
    body = json_body()
    unknown = set(body) - {"mountpoint", "fstype", "format", "label"}
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))[:300]}")
    if "mountpoint" not in body:
        raise ApiError(400, "mountpoint is required")
    result = mounts.mount(
        _storage(),
        vol,
        body["mountpoint"],
        fstype=body.get("fstype", "ext4"),
        format=body.get("format", DEFAULT_MOUNT_FORMAT),
        label=body.get("label"),
        owner=current_app.config["SCIPIONCLOUD"].desktop.user,
    )
    return jsonify(result)


@bp.post("/v1/volumes/<vol>/unmount")
def unmount_volume(vol: str):
    return jsonify(mounts.unmount(_storage(), vol))
