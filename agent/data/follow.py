"""Follow an S3 prefix and place each new movie, once complete and verified, where a Scipion streaming
import watches. An object is listed only once its upload completed (S3 shows a multipart upload only after
CompleteMultipartUpload); it is downloaded to `<name>.scipioncloud-partial` in the same folder (same
filesystem), checked against its SHA-256, and renamed to its name: Scipion never sees a half-written movie.
Give the import a file pattern with the movie extension (e.g. `*.tif`), which the partial name never
matches."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.s3 import transfer

log = logging.getLogger(__name__)


@dataclass
class Follow:
    url: transfer.S3Url
    dest: Path
    placed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    last_look: float | None = None
    bytes_placed: int = 0

    def to_json(self) -> dict:
        return {
            "source": str(self.url),
            "dest": str(self.dest),
            "placed": len(self.placed),
            "bytes_placed": self.bytes_placed,
            "failed": self.failed,
            "last_look": self.last_look,
        }


class Follower:
    """One look per `tick()`; the agent calls it periodically (services.Periodic)."""

    def __init__(self, client_factory, follows: list[Follow]) -> None:
        self.client_factory = client_factory
        self.follows = follows
        self.lock = threading.Lock()
        self.errors = 0  # movies (or whole looks) that failed since the agent started (/metrics)

    def tick(self) -> None:
        with self.lock:
            for follow in self.follows:
                try:
                    self.look(follow)
                except Exception as exc:  # one bad prefix (no permission, no network) must not stop the rest
                    log.warning("following %s: %s", follow.url, exc)
                    follow.failed[str(follow.url)] = str(exc)
                    self.errors += 1

    def look(self, follow: Follow) -> list[str]:
        client = self.client_factory()
        objects = transfer.list_objects(client, follow.url)
        jobs = []
        for obj in objects:
            dest = follow.dest / obj.relative
            if transfer.local_is_current(dest, obj):
                continue
            if dest.exists():
                continue  # a different file with this name is already there: never overwrite a movie
            jobs.append((obj, dest))
        totals = transfer.Totals()
        if jobs:
            transfer.Puller(client, follow.url.bucket, totals=totals).pull_many(jobs)
        follow.last_look = time.time()
        placed = [k for k in totals.transferred]
        follow.placed.extend(placed)
        follow.bytes_placed += sum(o.size for o, _ in jobs if o.key in placed)
        follow.failed.pop(str(follow.url), None)
        follow.failed.update(totals.failed)
        self.errors += len(totals.failed)
        return placed
