"""Movies on the instance: follow an S3 prefix into Scipion's streaming import folder, archive aligned movies
to S3 by each project's policy (verified before EBS is freed), and restore them (quote first).

Config: `[data]` in agent.toml (policy_file, follow, interval_s, auto_archive); policies: agent.data.policy.
S3 is reached with the instance's credentials through boto3 (AWS_ENDPOINT_URL in tests)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Blueprint, Flask, current_app, jsonify
from prometheus_client.core import CounterMetricFamily, Metric

from agent import collectors, services
from agent.config import Config
from agent.data import archive, follow, policy
from agent.errors import ApiError, json_body
from agent.openapi import REQUIRED, operation
from agent.s3 import transfer
from agent.s3.errors import BadRequest

log = logging.getLogger(__name__)
bp = Blueprint("data", __name__)
KEY = "scipioncloud.data"

# What the answers always carry (Data.state, Archiver.plan/archive/restore); null where unknown.
STATE = REQUIRED(
    ["follow", "projects", "policy_file", "problem"], follow="array", projects="object", policy_file="string"
)
PLAN_KEYS = ["project", "storage_class", "bucket", "movies", "counts", "bytes_to_archive", "saving"]
PLAN_TYPES = dict(
    project="string", storage_class="string", bucket="string", movies="array", counts="object",
    bytes_to_archive="integer", saving="object",
)  # fmt: skip
PLAN = REQUIRED(PLAN_KEYS, **PLAN_TYPES)
ARCHIVED = REQUIRED([*PLAN_KEYS, "dry_run"], **PLAN_TYPES, dry_run="boolean")
RESTORE = REQUIRED(["project", "quote", "started"], project="string", quote="object", started="boolean")

OPENAPI = {
    "/v1/data": {
        "get": operation(
            "Movies: followed S3 prefixes, and per project archived/pending movies and bytes freed",
            schema=STATE,
            _200="the state",
            _401="no token",
        )
    },
    "/v1/data/projects/{project}/plan": {
        "get": operation(
            "Dry run: what the policy would archive now, why each movie is kept, and the monthly saving",
            schema=PLAN,
            _200="the plan",
            _401="no token",
            _404="no policy for this project",
            _503="the project cannot be read",
        )
    },
    "/v1/data/projects/{project}/archive": {
        "post": operation(
            'Archive aligned movies (body {"dry_run": true} only plans); frees EBS only after verifying S3',
            body={"type": "object", "properties": {"dry_run": {"type": "boolean"}}},
            schema=ARCHIVED,
            _200="what was archived, what failed (and stayed), bytes freed",
            _401="no token",
            _404="no policy for this project",
            _409="an archive or restore is running",
            _503="the project cannot be read",
        )
    },
    "/v1/data/projects/{project}/restore": {
        "post": operation(
            "Restore archived movies to their paths: without confirm, only the time and cost quote",
            schema=RESTORE,
            body={
                "type": "object",
                "properties": {
                    # null or absent: every archived movie of the project
                    "movies": {"type": "array", "items": {"type": "string"}, "nullable": True},
                    "tier": {"type": "string", "enum": ["Expedited", "Standard", "Bulk"]},
                    "confirm": {"type": "boolean"},
                },
            },
            _200="the quote, or what was restored / is waiting for Glacier",
            _400="bad body",
            _401="no token",
            _404="no policy for this project",
            _409="an archive or restore is running",
        )
    },
}


def s3_client():
    import boto3

    return boto3.session.Session().client("s3", config=transfer.client_config())


class Data:
    def __init__(self, config: Config, client_factory=s3_client) -> None:
        self.config = config.data
        self.problem: str | None = None
        try:
            policies = policy.load(self.config.policy_file)
        except policy.PolicyError as exc:
            policies, self.problem = {}, str(exc)
            log.warning("data: %s", exc)
        self.archiver = archive.Archiver(config.storage.state_dir, policies, client_factory)
        follows = []
        for spec in self.config.follow:
            source, _, dest = spec.partition("=")
            try:
                follows.append(follow.Follow(transfer.S3Url.parse(source), dest=_path(dest)))
            except Exception as exc:
                self.problem = f"data.follow {spec!r}: {exc}"
        self.follower = follow.Follower(client_factory, follows)
        self.loop = services.Periodic("data", self.config.interval_s, self.tick)

    def tick(self) -> None:
        self.follower.tick()
        if self.config.auto_archive:
            for name in self.archiver.policies:
                try:
                    self.archiver.archive(name)
                except Exception:
                    log.exception("data: archiving %s failed", name)

    def start(self) -> None:
        if self.follower.follows or self.config.auto_archive:
            self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def state(self) -> dict:
        return {
            "follow": [f.to_json() for f in self.follower.follows],
            "projects": self.archiver.status(),
            "policy_file": str(self.config.policy_file),
            "problem": self.problem,
        }


def _path(text: str):
    from pathlib import Path

    if not text.startswith("/"):
        raise ValueError("give SOURCE=DEST with an absolute DEST folder")
    return Path(text)


def init_app(app: Flask, config: Config) -> None:
    data = Data(config)
    app.extensions[KEY] = data
    services.register(app, "data", data)
    collectors.register(app, "data", collect_metrics)


def collect_metrics(app: Flask) -> tuple[Iterator[Metric], bool]:
    """Movies for /metrics, from the manifests and the projects as GET /v1/data reads them; not ok when a
    project cannot be read or the configuration has a problem."""
    data: Data = app.extensions[KEY]
    projects = data.archiver.status()
    labels = ["project"]
    archived = collectors.gauge(
        "data_archived_movies", "Movies archived to S3 (their EBS space freed)", labels
    )
    freed = collectors.gauge(
        "data_freed_bytes", "EBS bytes freed by archiving (the archived movies' size)", labels
    )
    pending = collectors.gauge(
        "data_pending_movies", "Aligned movies the policy will archive (now or after its delay)", labels
    )
    restored = collectors.gauge("data_restored_movies", "Archived movies restored to their paths", labels)
    for name, p in projects.items():
        archived.add_metric([name], p["archived"])
        freed.add_metric([name], p["bytes_freed"])
        pending.add_metric([name], p["pending"])
        restored.add_metric([name], p["restored"])
    placed = collectors.gauge("data_followed_movies", "Movies placed from a followed S3 prefix", ["source"])
    for follow_ in data.follower.follows:
        placed.add_metric([str(follow_.url)], len(follow_.placed))
    errors = CounterMetricFamily(
        collectors.PREFIX + "data_transfer_errors",
        "Movies whose transfer failed (and stayed where they were) since the agent started",
        labels=["operation"],
    )
    for kind, count in (*data.archiver.errors.items(), ("follow", data.follower.errors)):
        errors.add_metric([kind], count)
    ok = data.problem is None and not any(p["problem"] for p in projects.values())
    return iter([archived, freed, pending, restored, placed, errors]), ok


def _data() -> Data:
    return current_app.extensions[KEY]


def _project(name: str):
    try:
        return _data().archiver.policy(name)
    except KeyError:
        raise ApiError(404, f"no policy for project {name!r}; add it to the policy file") from None


@bp.get("/v1/data")
def state():
    return jsonify(_data().state())


@bp.get("/v1/data/projects/<project>/plan")
def plan(project: str):
    _project(project)
    try:
        return jsonify(_data().archiver.plan(project))
    except OSError as exc:
        raise ApiError(503, f"cannot read project {project!r}: {exc}") from None


@bp.post("/v1/data/projects/<project>/archive")
def archive_route(project: str):
    _project(project)
    body = json_body()
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ApiError(400, "dry_run must be true or false")
    try:
        return jsonify(_data().archiver.archive(project, dry_run=dry_run))
    except RuntimeError as exc:
        raise ApiError(409, str(exc)) from None
    except OSError as exc:
        raise ApiError(503, f"cannot read project {project!r}: {exc}") from None


@bp.post("/v1/data/projects/<project>/restore")
def restore_route(project: str):
    _project(project)
    body = json_body()
    movies, tier, confirm = body.get("movies"), body.get("tier", "Standard"), body.get("confirm", False)
    if movies is not None and (not isinstance(movies, list) or not all(isinstance(m, str) for m in movies)):
        raise ApiError(400, "movies must be a list of paths or file names")
    if tier not in ("Expedited", "Standard", "Bulk") or not isinstance(confirm, bool):
        raise ApiError(400, "tier must be Expedited, Standard or Bulk; confirm true or false")
    try:
        return jsonify(_data().archiver.restore(project, movies, tier=tier, confirm=confirm))
    except BadRequest as exc:  # e.g. Expedited asked of Deep Archive
        raise ApiError(400, str(exc)) from None
    except RuntimeError as exc:
        raise ApiError(409, str(exc)) from None
