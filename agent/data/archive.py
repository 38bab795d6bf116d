"""Archive aligned movies to S3 and free their EBS space; bring them back on request.

The order is the safety: (1) the project says the movie is aligned and no active run still reads it, the
policy covers it and its delay has passed; (2) upload in the policy's storage class; (3) verify: the object's
size and S3's checksum (CRC64NVME; SHA-256 for objects of earlier versions) against a fresh read of the file,
and the file unchanged since the upload began. S3's checksum is S3's own word only on an endpoint that checks
the checksums it is sent (agent/s3/probe.py); on one that keeps them unchecked the object is also read back
and compared, and a Glacier or Deep Archive movie goes up in STANDARD, is read back, and is then copied into
its class; (4) write the manifest entry and the placeholder
(`<movie>.s3.json`, what and where); (5) only then unlink the movie. A failure at any step leaves the
movie where it was."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

from agent.data import policy as policy_mod
from agent.data import scipion
from agent.s3 import checksums as sums
from agent.s3 import costs as s3costs
from agent.s3 import probe, transfer

log = logging.getLogger(__name__)
PLACEHOLDER_SUFFIX = ".s3.json"
# Classes whose objects cannot be read without a restore: on an endpoint that does not check the checksums it
# is sent, a movie for them is uploaded in STANDARD, read back, and only then copied into its class.
NOT_READABLE = ("GLACIER", "DEEP_ARCHIVE")
COPY_MAX = 5 * 1024**3  # CopyObject's largest object; bigger ones need a multipart copy


@dataclass
class Decision:
    movie: scipion.MovieState
    action: str  # archive, archived, wait, blocked, keep, not-aligned, missing
    reason: str
    size: int = 0

    def to_json(self) -> dict:
        return {
            "movie": str(self.movie.path),
            "file": str(self.movie.real_path),
            "action": self.action,
            "reason": self.reason,
            "bytes": self.size,
            "aligned_by": self.movie.aligned_by,
            "readers": self.movie.readers,
        }


class Manifest:
    """What was archived, per project: <state_dir>/data/<project>.manifest.json (atomic writes)."""

    def __init__(self, folder: Path, project: str) -> None:
        self.path = folder / f"{project}.manifest.json"
        self.lock = threading.Lock()

    def load(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text())["movies"]
        except (OSError, ValueError, KeyError):
            return {}

    def save(self, movies: dict[str, dict]) -> None:
        transfer._write_json(self.path, {"schema": 1, "movies": movies})

    def update(self, path: str, entry: dict | None) -> None:
        with self.lock:
            movies = self.load()
            if entry is None:
                movies.pop(path, None)
            else:
                movies[path] = entry
            self.save(movies)


class Archiver:
    def __init__(
        self, state_dir: Path, policies: dict[str, policy_mod.ProjectPolicy], client_factory
    ) -> None:
        self.folder = state_dir / "data"
        self.policies = policies
        self.client_factory = client_factory
        self.lock = threading.Lock()  # one archive or restore at a time per agent
        self.last: dict[str, dict] = {}
        self.errors = {"archive": 0, "restore": 0}  # movies that failed since the agent started (/metrics)

    def policy(self, project: str) -> policy_mod.ProjectPolicy:
        if project not in self.policies:
            raise KeyError(project)
        return self.policies[project]

    def manifest(self, project: str) -> Manifest:
        return Manifest(self.folder, project)

    # -- what would happen
    def decide(self, project: str, now: float | None = None) -> list[Decision]:
        pol = self.policy(project)
        now = now or time.time()
        archived = self.manifest(project).load()
        decisions = []
        for movie in scipion.movie_states(pol.path):
            key = str(movie.real_path)
            if key in archived and archived[key].get("state") == "archived":
                decisions.append(Decision(movie, "archived", archived[key]["url"], archived[key]["size"]))
                continue
            try:
                size = movie.real_path.stat().st_size
            except OSError:
                decisions.append(Decision(movie, "missing", "the movie file is not on disk"))
                continue
            if pol.keeps(movie.real_path):
                decision = Decision(movie, "keep", "a keep pattern of the policy matches", size)
            elif movie.readers:
                runs = ", ".join(map(str, movie.readers))
                decision = Decision(movie, "blocked", f"active run(s) {runs} still read it", size)
            elif not movie.aligned_by:
                decision = Decision(
                    movie, "not-aligned", "no finished or streaming alignment output yet", size
                )
            elif now - (movie.aligned_at or now) < pol.delay_min * 60:
                left = pol.delay_min * 60 - (now - (movie.aligned_at or now))
                decision = Decision(
                    movie, "wait", f"aligned; archived in {left / 60:.0f} min (policy delay)", size
                )
            else:
                decision = Decision(movie, "archive", f"aligned by run(s) {movie.aligned_by}", size)
            decisions.append(decision)
        return decisions

    def plan(self, project: str) -> dict:
        pol = self.policy(project)
        decisions = self.decide(project)
        todo = sum(d.size for d in decisions if d.action == "archive")
        return {
            "project": project,
            "storage_class": pol.storage_class,
            "bucket": pol.bucket,
            "movies": [d.to_json() for d in decisions],
            "counts": _counts(decisions),
            "bytes_to_archive": todo,
            "saving": s3costs.monthly_saving(todo, pol.storage_class),
        }

    # -- doing it
    def archive(self, project: str, *, dry_run: bool = False) -> dict:
        plan = self.plan(project)
        if dry_run:
            return {**plan, "dry_run": True}
        if not self.lock.acquire(blocking=False):
            raise RuntimeError("an archive or restore is already running; try again when it ends")
        try:
            return self._archive(project, plan)
        finally:
            self.lock.release()

    def _archive(self, project: str, plan: dict) -> dict:
        pol = self.policy(project)
        manifest = self.manifest(project)
        client = self.client_factory()
        freed, archived, failed = 0, [], {}
        for entry in plan["movies"]:
            if entry["action"] != "archive":
                continue
            path = Path(entry["file"])
            try:
                freed += self._archive_one(client, pol, manifest, path)
                archived.append(str(path))
            except (OSError, ClientError, BotoCoreError, transfer.TransferFailed, VerifyError) as exc:
                failed[str(path)] = str(exc)
                log.warning("archive of %s failed, the movie stays: %s", path, exc)
        self.errors["archive"] += len(failed)
        result = {**plan, "dry_run": False, "archived": archived, "failed": failed, "bytes_freed": freed}
        self.last[project] = {"at": time.time(), "archived": len(archived), "failed": len(failed)}
        return result

    def _archive_one(self, client, pol: policy_mod.ProjectPolicy, manifest: Manifest, path: Path) -> int:
        st = path.stat()
        key = pol.key_for(path)
        for other, entry in manifest.load().items():
            if entry.get("key") == key and entry.get("bucket") == pol.bucket and other != str(path):
                raise VerifyError(f"s3://{pol.bucket}/{key} already holds {other}; not overwriting it")
        existing = transfer.head(client, pol.bucket, key)
        if existing is not None:
            # Something is there already (an earlier run that stopped before freeing, or a stranger):
            # reuse it only if it is this very file, never overwrite it.
            try:
                checksum = verify(client, pol.bucket, key, path, st)
            except VerifyError as exc:
                raise VerifyError(
                    f"{exc}; an object with other bytes is at that key, not overwriting"
                ) from None
            if (
                pol.storage_class in NOT_READABLE
                and existing.get("StorageClass", "STANDARD") != pol.storage_class
            ):
                # an earlier run went up in STANDARD to read it back, and stopped before the copy
                move_to_class(client, pol.bucket, key, pol.storage_class, st.st_size, checksum)
            return self._record_and_free(manifest, pol, path, key, st, checksum)
        read_back_first = pol.storage_class in NOT_READABLE and not probe.checks_checksums(
            client, pol.bucket, key
        )
        if read_back_first and st.st_size > COPY_MAX:
            raise VerifyError(
                f"{path}: the endpoint does not check the checksums it is sent, and a movie over 5 GiB "
                f"cannot be read back and then moved to {pol.storage_class}; not archiving it"
            )
        totals = transfer.Totals()
        pusher = transfer.Pusher(
            client,
            pol.bucket,
            state_dir=self.folder / "uploads",
            storage_class=None if read_back_first else pol.storage_class,
            totals=totals,
        )
        pusher.push_many([transfer.PushItem(path, key, st.st_size, st.st_mtime_ns)])
        if totals.failed:
            raise transfer.TransferFailed(next(iter(totals.failed.values())))
        checksum = verify(client, pol.bucket, key, path, st)
        if read_back_first:
            move_to_class(client, pol.bucket, key, pol.storage_class, st.st_size, checksum)
        return self._record_and_free(manifest, pol, path, key, st, checksum)

    def _record_and_free(self, manifest, pol, path: Path, key: str, st: os.stat_result, checksum: str) -> int:
        entry = {
            "state": "archived",
            "url": f"s3://{pol.bucket}/{key}",
            "bucket": pol.bucket,
            "key": key,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "checksum": checksum,
            "checksum_algorithm": sums.ALGORITHM,
            "storage_class": pol.storage_class,
            "archived_at": time.time(),
        }
        manifest.update(str(path), entry)
        placeholder = path.with_name(path.name + PLACEHOLDER_SUFFIX)
        transfer._write_json(placeholder, {"archived_movie": str(path), **entry})
        os.unlink(path)
        log.info("archived %s to %s and freed %d bytes", path, entry["url"], st.st_size)
        return st.st_size

    # -- bringing back
    def restore(
        self, project: str, movies: list[str] | None = None, *, tier: str = "Standard", confirm: bool = False
    ) -> dict:
        manifest = self.manifest(project)
        entries = {p: e for p, e in manifest.load().items() if e.get("state") == "archived"}
        if movies:
            wanted = {str(Path(m)) for m in movies}
            entries = {p: e for p, e in entries.items() if p in wanted or Path(p).name in wanted}
        quote = s3costs.retrieval_quote(
            [{"size": e["size"], "storage_class": e["storage_class"]} for e in entries.values()], tier
        )
        if not confirm or not entries:
            return {"project": project, "quote": quote, "movies": sorted(entries), "started": False}
        if not self.lock.acquire(blocking=False):
            raise RuntimeError("an archive or restore is already running; try again when it ends")
        try:
            return self._restore(project, manifest, entries, tier, quote)
        finally:
            self.lock.release()

    def _restore(self, project: str, manifest: Manifest, entries: dict, tier: str, quote: dict) -> dict:
        client = self.client_factory()
        restored, waiting, failed = [], [], {}
        for path_text, entry in sorted(entries.items()):
            path = Path(path_text)
            try:
                if path.exists():
                    raise VerifyError(f"{path} exists again; not overwriting it (move it away to restore)")
                head = client.head_object(Bucket=entry["bucket"], Key=entry["key"], ChecksumMode="ENABLED")
                if entry["storage_class"] in (
                    "GLACIER",
                    "DEEP_ARCHIVE",
                ) and 'ongoing-request="false"' not in (head.get("Restore") or ""):
                    if not head.get("Restore"):
                        client.restore_object(
                            Bucket=entry["bucket"],
                            Key=entry["key"],
                            RestoreRequest={"Days": 7, "GlacierJobParameters": {"Tier": tier}},
                        )
                    waiting.append(path_text)
                    continue
                obj = transfer.RemoteObject(
                    entry["key"], path.name, head["ContentLength"], head["ETag"], entry["mtime_ns"] / 1e9
                )
                totals = transfer.Totals()
                transfer.Puller(client, entry["bucket"], totals=totals).pull_many([(obj, path)])
                if totals.failed:
                    raise transfer.TransferFailed(next(iter(totals.failed.values())))
                got = sums.checksum_like(path, head)
                if not sums.same(got, recorded_checksum(entry)):
                    raise VerifyError(f"{path}: restored bytes differ from the archived checksum")
                os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
                path.with_name(path.name + PLACEHOLDER_SUFFIX).unlink(missing_ok=True)
                manifest.update(path_text, {**entry, "state": "restored", "restored_at": time.time()})
                restored.append(path_text)
            except (OSError, ClientError, BotoCoreError, transfer.TransferFailed, VerifyError) as exc:
                failed[path_text] = str(exc)
        self.errors["restore"] += len(failed)
        return {
            "project": project,
            "quote": quote,
            "started": True,
            "restored": restored,
            "waiting": waiting,
            "failed": failed,
        }

    # -- status
    def status(self) -> dict:
        projects = {}
        for name in self.policies:
            entries = self.manifest(name).load().values()
            archived = [e for e in entries if e.get("state") == "archived"]
            restored = [e for e in entries if e.get("state") == "restored"]
            try:
                counts = _counts(self.decide(name))
                problem = None
            except (OSError, ValueError) as exc:
                counts, problem = {}, str(exc)
            except Exception as exc:  # a project being rewritten: report, never 500
                counts, problem = {}, f"could not read the project: {exc}"
            projects[name] = {
                "archived": len(archived),
                "bytes_freed": sum(e["size"] for e in archived),
                "pending": counts.get("archive", 0) + counts.get("wait", 0),
                "restored": len(restored),
                "counts": counts,
                "last_run": self.last.get(name),
                "problem": problem,
            }
        return projects


class VerifyError(RuntimeError):
    pass


def verify(client, bucket: str, key: str, path: Path, before: os.stat_result) -> str:
    """The object in S3 is this file: same size, and S3's checksum (CRC64NVME, or SHA-256 for an object of
    an earlier version) equals a fresh read of the file, which has not changed since `before`. Returns the
    checksum; raises VerifyError otherwise."""
    head: dict[str, Any] = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    if head["ContentLength"] != before.st_size:
        raise VerifyError(f"s3://{bucket}/{key} has {head['ContentLength']} bytes, the file {before.st_size}")
    remote = sums.object_checksum(head)
    if not remote:
        raise VerifyError(f"s3://{bucket}/{key} carries no CRC64NVME or SHA-256 checksum; not freeing {path}")
    local = sums.checksum_like(path, head)
    now = path.stat()
    if (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise VerifyError(f"{path} changed while it was being archived")
    if not sums.same(local, remote):
        raise VerifyError(f"checksum of s3://{bucket}/{key} ({remote}) differs from {path} ({local})")
    if not probe.checks_checksums(client, bucket, key):
        read_back(client, bucket, key, head, path)
    return local


def read_back(client, bucket: str, key: str, head: dict, path: Path) -> None:
    """The endpoint keeps whatever checksum it is sent without checking the bytes (agent/s3/probe.py), so the
    checksum it reports is our own number echoed: read the object back and compare its bytes with the file's
    (CRC64NVME of both). Raises VerifyError when they differ or the object cannot be read now."""
    storage = head.get("StorageClass") or "STANDARD"
    if storage in NOT_READABLE or head.get("ArchiveStatus"):
        raise VerifyError(
            f"s3://{bucket}/{key}: the endpoint does not check the checksums it is sent, and a {storage} "
            f"object cannot be read back to compare; not freeing {path}"
        )
    crc = sums.Crc64()
    local = sums.file_checksum(path, None, False)
    differ = (
        f"the bytes of s3://{bucket}/{key}, read back, differ from {path} although the endpoint reports a "
        "matching checksum; not freeing"
    )
    try:
        body = client.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])["Body"]
        for chunk in body.iter_chunks(sums.READ_CHUNK):
            crc.update(chunk)
    except FlexibleChecksumError:  # botocore compared the answer with the (echoed) checksum itself
        raise VerifyError(differ) from None
    if sums.b64(crc.digest()) != local:
        raise VerifyError(differ)


def move_to_class(client, bucket: str, key: str, storage_class: str, size: int, checksum: str) -> None:
    """Copy a verified object onto itself in `storage_class` (the endpoint copies the stored bytes itself),
    then check that it is there in that class with the same size and checksum."""
    client.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        StorageClass=storage_class,
        MetadataDirective="COPY",
        ChecksumAlgorithm=sums.ALGORITHM,
    )
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    if (head.get("StorageClass"), head["ContentLength"]) != (storage_class, size) or not sums.same(
        checksum, sums.object_checksum(head)
    ):
        raise VerifyError(f"s3://{bucket}/{key} is not in {storage_class} with its bytes after the copy")


def recorded_checksum(entry: dict) -> str | None:
    """The checksum a manifest entry recorded: "checksum" now, "checksum_sha256" in entries of earlier
    versions."""
    return entry.get("checksum") or entry.get("checksum_sha256")


def _counts(decisions: list[Decision]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.action] = counts.get(d.action, 0) + 1
    return counts
