"""Parallel, resumable, verified transfers between files and S3 objects (`data push` / `data pull`, and the
agent's archive and restore).

Engine: boto3's low-level S3 calls (CreateMultipartUpload, UploadPart, ListParts, CompleteMultipartUpload;
ranged GetObject) in a thread pool, plus a small JSON state file per file in flight. boto3's managed
transfers (s3transfer's TransferManager) parallelise well but keep the upload id only in memory: a crash or
Ctrl-C aborts or orphans the multipart upload and the next run sends every part again. The state file holds
the upload id; on resume, ListParts (S3's own record) says which parts arrived, with their checksums, and
only the others are sent. Every part carries an S3 additional checksum (CRC64NVME, S3's default) computed
here while reading the file: S3 rejects a part whose bytes differ, and the object's full-object checksum is
compared with the file after a pull or before an archive frees anything (see agent.s3.checksums)."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

from agent.s3 import checksums as sums
from agent.s3 import probe, sink
from agent.s3.errors import BadRequest, TransferFailed
from agent.s3.ratelimit import TokenBucket

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's most parts per upload
DEFAULT_PART = 64 * MiB  # a part is in memory only while a worker sends it: 8 x 64 MiB at most
DEFAULT_CONCURRENCY = 8
SINGLE_GET_MAX = 256 * MiB  # single-part objects up to this size come in one GET (verified as they arrive)
PARTIAL_SUFFIX = ".scipioncloud-partial"  # a pull in progress; renamed into place once verified
INCOMPLETE = "did not complete (an unexpected error, see the log); run again (it resumes)"


# -- addresses -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # a prefix for a folder, an object key for one file

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, text: str) -> S3Url:
        if not text.startswith("s3://") or not text[5:].split("/", 1)[0]:
            raise BadRequest(f"{text!r} is not an S3 address; give s3://BUCKET/PREFIX")
        bucket, _, key = text[5:].partition("/")
        return cls(bucket, key)

    def join(self, relative: str) -> str:
        if not self.key:
            return relative
        return self.key.rstrip("/") + "/" + relative


def choose_part_size(size: int, wanted: int = DEFAULT_PART) -> int:
    part = max(wanted, MIN_PART)
    while size > part * MAX_PARTS:
        part *= 2
    return part


# -- progress ------------------------------------------------------------------------------------------
@dataclass
class Totals:
    """What a run did, for the summary and --json. Thread-safe counters."""

    files: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_resumed: int = 0  # parts already in S3 / on disk from an earlier run, not sent again
    parts_sent: int = 0
    parts_resumed: int = 0
    transferred: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unchanged since the last run
    failed: dict[str, str] = field(default_factory=dict)
    # moved, but no end-to-end check was possible: the server kept or confirmed no checksum of ours
    unverified: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    on_bytes: Callable[[int], None] = field(default=lambda n: None, repr=False)
    started: float = field(default_factory=time.monotonic)

    def add(self, n: int, *, resumed: bool = False) -> None:
        with self.lock:
            self.bytes_done += n
            if resumed:
                self.bytes_resumed += n
                self.parts_resumed += 1
            else:
                self.parts_sent += 1
        self.on_bytes(n)

    def to_json(self) -> dict:
        seconds = time.monotonic() - self.started
        moved = self.bytes_done - self.bytes_resumed
        return {
            "files": self.files,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "bytes_resumed": self.bytes_resumed,
            "parts_sent": self.parts_sent,
            "parts_resumed": self.parts_resumed,
            "seconds": round(seconds, 2),
            "mb_s": round(moved / seconds / 1e6, 1) if seconds > 0 else None,
            "transferred": self.transferred,
            "skipped": self.skipped,
            "failed": self.failed,
            "unverified": self.unverified,
        }


# -- state files ---------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    """Atomic: a crash mid-write leaves the previous state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "scipioncloud" / "uploads"


def upload_state_path(state_dir: Path, bucket: str, key: str, source: Path) -> Path:
    name = hashlib.sha256(f"{bucket}\0{key}\0{source.resolve()}".encode()).hexdigest()[:32]
    return state_dir / f"{name}.json"


# -- the S3 client our transfers want ------------------------------------------------------------------
def client_config(concurrency: int = DEFAULT_CONCURRENCY) -> Config:
    """botocore settings for a transfer client: a connection per worker, standard retries, and no second
    hashing of the bytes, which this module already checksums once (bench/bench_data.py, profiled):
    - no SigV4 payload hash: every object and part we send carries its own x-amz-checksum-crc64nvme that S3
      checks; over HTTPS botocore already leaves such a payload unsigned, over plain HTTP (a local
      endpoint) it would hash every part a second time;
    - no botocore checksum of a GET's answer unless asked: a pull hashes each part as it arrives and
      compares with S3's checksum itself (the Puller), so botocore's own pass would be the same work twice;
    - request checksums only where S3 requires one: ours are given explicitly on every upload."""
    return Config(
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=max(10, concurrency + 2),
        s3={"payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


# -- push ----------------------------------------------------------------------------------------------
# What a worker turns into a failure of its file. BotoCoreError too: botocore's own checksum check of a
# response (FlexibleChecksumError) or a dropped connection must fail the file loudly, not vanish in a future.
FAILURES = (OSError, ClientError, BotoCoreError, TransferFailed)


class FileChanged(TransferFailed):
    pass


@dataclass
class PushItem:
    source: Path
    key: str
    size: int
    mtime_ns: int


def local_files(source: Path) -> Iterator[tuple[Path, str]]:
    """(path, relative name with '/') for a file or every regular file under a folder, sorted."""
    if source.is_file():
        yield source, source.name
        return
    if not source.is_dir():
        raise BadRequest(f"{source} does not exist (give a file or a folder of movies)")
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not name.endswith((PARTIAL_SUFFIX, ".tmp")):
                yield path, path.relative_to(source).as_posix()


def head(client, bucket: str, key: str) -> dict | None:
    try:
        return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def unchanged(item: PushItem, remote: dict | None) -> bool:
    if remote is None or remote.get("ContentLength") != item.size:
        return False
    return sums.metadata(remote).get(sums.MTIME_META) == str(item.mtime_ns)


class Pusher:
    """Uploads files as objects; one instance per run, parts of all files share one thread pool."""

    def __init__(
        self,
        client,
        bucket: str,
        *,
        state_dir: Path | None = None,
        part_size: int = DEFAULT_PART,
        concurrency: int = DEFAULT_CONCURRENCY,
        limiter: TokenBucket | None = None,
        storage_class: str | None = None,
        extra_metadata: dict[str, str] | None = None,
        totals: Totals | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.state_dir = state_dir or default_state_dir()
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.limiter = limiter or TokenBucket(None)
        self.storage_class = storage_class
        self.extra_metadata = extra_metadata or {}
        self.totals = totals or Totals()
        self._endpoint_checks: list[bool | None] = []  # the probe's answer, asked once per run
        self._probe_lock = threading.Lock()

    def endpoint_checks(self, beside: str) -> bool | None:
        """Does the endpoint check the checksums it is sent (agent/s3/probe.py)? None: not known."""
        with self._probe_lock:
            if not self._endpoint_checks:
                self._endpoint_checks.append(probe.endpoint_checks(self.client, self.bucket, beside))
            return self._endpoint_checks[0]

    # one file, its parts in the pool
    def _metadata(self, item: PushItem, part_size: int | None) -> dict[str, str]:
        meta = {sums.MTIME_META: str(item.mtime_ns), **self.extra_metadata}
        if part_size:
            meta[sums.PART_SIZE_META] = str(part_size)
        return meta

    def _read_part(self, item: PushItem, offset: int, length: int) -> tuple[bytes, bytes]:
        with open(item.source, "rb", buffering=0) as handle:
            data = os.pread(handle.fileno(), length, offset)
        if len(data) != length:
            raise FileChanged(f"{item.source} changed while uploading (it is shorter now); run again")
        return data, sums.part_digest(data)

    def _check_unchanged(self, item: PushItem) -> None:
        st = os.stat(item.source)
        if st.st_size != item.size or st.st_mtime_ns != item.mtime_ns:
            raise FileChanged(
                f"{item.source} changed while uploading (size or mtime); nothing was kept, run again once "
                "the file is complete"
            )

    def _put_single(self, item: PushItem) -> dict:
        data, digest = self._read_part(item, 0, item.size)
        self.limiter.take(len(data))
        self._check_unchanged(item)
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": item.key,
            "Body": data,
            "ChecksumAlgorithm": sums.ALGORITHM,
            f"Checksum{sums.ALGORITHM}": sums.b64(digest),
            "Metadata": self._metadata(item, None),
        }
        if self.storage_class:
            params["StorageClass"] = self.storage_class
        answer = self.client.put_object(**params)
        self._confirmed(item.key, answer, sums.b64(digest))
        self.totals.add(item.size)
        return {"key": item.key, "checksum": sums.b64(digest), "size": item.size}

    def _confirmed(self, key: str, answer: dict, sent: str) -> None:
        """S3 answers an upload with the object's checksum, which it compared with ours. A server that
        answers without it is asked once more (HeadObject); one that reports another checksum fails the file,
        one that keeps none (S3-compatible servers after a multipart upload) leaves the object unverified,
        and the run says so. An endpoint that stores checksums without checking them (moto, rclone) would
        only echo ours back: nothing is asked, and the object is unverified."""
        if self.endpoint_checks(key) is False:
            with self.totals.lock:
                self.totals.unverified.append(key)
            return
        got = answer.get(f"Checksum{sums.ALGORITHM}")
        if got is None:
            got = sums.object_checksum(head(self.client, self.bucket, key) or {})
        if got is None:
            with self.totals.lock:
                self.totals.unverified.append(key)
        elif not sums.same(sent, got):
            raise TransferFailed(f"{key}: the server reports checksum {got}, the file's is {sent}")

    def _start_multipart(self, item: PushItem, state_path: Path, part_size: int) -> tuple[str, dict]:
        """(upload id, {part number: checksum} already in S3) - resumed from the state file when it
        matches this file and S3 still has the upload."""
        state = _read_json(state_path)
        if (
            state
            and state.get("size") == item.size
            and state.get("mtime_ns") == item.mtime_ns
            and state.get("part_size") == part_size
            and state.get("bucket") == self.bucket
            and state.get("key") == item.key
            and state.get("algorithm") == sums.ALGORITHM  # an upload of an earlier version starts over
        ):
            try:
                # A part counts as sent when S3 lists it with the ETag we recorded for it (and S3's own
                # checksum, when it reports one, is ours): S3's record and ours agree on its bytes.
                recorded = state.get("parts", {})
                done = {}
                paginator = self.client.get_paginator("list_parts")
                for page in paginator.paginate(Bucket=self.bucket, Key=item.key, UploadId=state["upload_id"]):
                    for part in page.get("Parts", []):
                        mine = recorded.get(str(part["PartNumber"]))
                        if not mine or mine["etag"] != part["ETag"]:
                            continue
                        if part.get(f"Checksum{sums.ALGORITHM}") not in (None, mine["checksum"]):
                            continue
                        done[part["PartNumber"]] = mine
                return state["upload_id"], done
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise
                log.info("upload %s of %s is gone from S3; starting over", state["upload_id"], item.key)
        elif state:
            self._abort(state)
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": item.key,
            "ChecksumAlgorithm": sums.ALGORITHM,
            "ChecksumType": "FULL_OBJECT",  # the only type S3 has for CRC64NVME; said aloud all the same
            "Metadata": self._metadata(item, part_size),
        }
        if self.storage_class:
            params["StorageClass"] = self.storage_class
        upload_id = self.client.create_multipart_upload(**params)["UploadId"]
        _write_json(
            state_path,
            {
                "bucket": self.bucket,
                "key": item.key,
                "source": str(item.source),
                "size": item.size,
                "mtime_ns": item.mtime_ns,
                "part_size": part_size,
                "upload_id": upload_id,
                "algorithm": sums.ALGORITHM,
                "parts": {},
            },
        )
        return upload_id, {}

    def _abort(self, state: dict) -> None:
        with contextlib.suppress(ClientError):
            self.client.abort_multipart_upload(
                Bucket=state["bucket"], Key=state["key"], UploadId=state["upload_id"]
            )

    def _upload_part(self, item: PushItem, upload_id: str, number: int, offset: int, length: int) -> dict:
        data, digest = self._read_part(item, offset, length)
        self.limiter.take(length)
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=item.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            **{f"Checksum{sums.ALGORITHM}": sums.b64(digest)},
        )
        self.totals.add(length)
        return {"etag": answer["ETag"], "checksum": sums.b64(digest), "digest": digest}

    def push_many(self, items: list[PushItem]) -> dict[str, dict]:
        """Upload every item; {key: {"checksum", "size"}} for those that made it. Failures go to totals."""
        results: dict[str, dict] = {}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="push") as pool:
            pending: set[Future] = set()
            for item in items:
                try:
                    futures = self._submit(pool, item, results)
                except FAILURES as exc:
                    self._failed(item, exc)
                    continue
                pending.update(futures)
                while len(pending) > self.concurrency * 2:  # bounded read-ahead: memory stays parts x 2
                    _done, pending = wait(pending, return_when=FIRST_COMPLETED)
            wait(pending)
        for item in items:  # every file is sent or failed: none may go missing without a word
            if item.key not in results and str(item.source) not in self.totals.failed:
                self._failed(item, TransferFailed(INCOMPLETE))
        return results

    def _failed(self, item: PushItem, exc: BaseException) -> None:
        message = str(exc)
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            message = f"S3 refused: {err.get('Message', exc)} ({err.get('Code', '')})"
        with self.totals.lock:
            self.totals.failed[str(item.source)] = message
        log.warning("push of %s failed: %s", item.source, message)

    def _submit(self, pool: ThreadPoolExecutor, item: PushItem, results: dict) -> list[Future]:
        if item.size <= self.part_size:

            def single() -> None:
                try:
                    results[item.key] = self._put_single(item)
                    with self.totals.lock:
                        self.totals.transferred.append(item.key)
                except FAILURES as exc:
                    self._failed(item, exc)

            return [pool.submit(single)]
        part_size = choose_part_size(item.size, self.part_size)
        state_path = upload_state_path(self.state_dir, self.bucket, item.key, item.source)
        upload_id, done = self._start_multipart(item, state_path, part_size)
        layout = sums.parts_of(item.size, part_size)
        parts: dict[int, dict] = {}
        lock = threading.Lock()
        failed = threading.Event()
        remaining = [len(layout)]

        def finish() -> None:
            try:
                self._check_unchanged(item)
                ordered = [parts[n] for n in range(1, len(layout) + 1)]
                # S3 checks each part's CRC and the whole object's (the parts' CRCs combined) on completion
                whole = sums.full_object(
                    [(p["digest"], length) for p, (_, length) in zip(ordered, layout, strict=True)]
                )
                answer = self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=item.key,
                    UploadId=upload_id,
                    ChecksumType="FULL_OBJECT",
                    MultipartUpload={
                        "Parts": [
                            {"PartNumber": n, "ETag": p["etag"], f"Checksum{sums.ALGORITHM}": p["checksum"]}
                            for n, p in enumerate(ordered, 1)
                        ]
                    },
                    **{f"Checksum{sums.ALGORITHM}": whole},
                )
                self._confirmed(item.key, answer, whole)
            except FileChanged:
                self._abort({"bucket": self.bucket, "key": item.key, "upload_id": upload_id})
                state_path.unlink(missing_ok=True)
                raise
            state_path.unlink(missing_ok=True)
            results[item.key] = {"key": item.key, "checksum": whole, "size": item.size}
            with self.totals.lock:
                self.totals.transferred.append(item.key)

        state = _read_json(state_path) or {}
        state.setdefault("parts", {})

        def part_done(number: int, record: dict) -> None:
            with lock:
                parts[number] = record
                remaining[0] -= 1
                last = remaining[0] == 0
                if not last:  # the state file records each part sent, for a resume after a crash
                    state["parts"][str(number)] = {"etag": record["etag"], "checksum": record["checksum"]}
                    _write_json(state_path, state)
            if last and not failed.is_set():
                finish()

        def run_part(number: int, offset: int, length: int) -> None:
            if failed.is_set():
                return
            try:
                record = self._upload_part(item, upload_id, number, offset, length)
                part_done(number, record)
            except FAILURES as exc:
                if not failed.is_set():
                    failed.set()
                    self._failed(item, exc)

        futures = []
        for number, (offset, length) in enumerate(layout, 1):
            if number in done:
                # A part S3 already holds from an earlier run: its CRC (recorded, and S3's) joins the others.
                self.totals.add(length, resumed=True)
                record = done[number]
                digest = base64.b64decode(record["checksum"])
                part_done(number, {"etag": record["etag"], "checksum": record["checksum"], "digest": digest})
                continue
            futures.append(pool.submit(run_part, number, offset, length))
        return futures


def plan_push(client, source: Path, target: S3Url, *, only_changed: bool = True) -> tuple[list, list]:
    """(items to send, keys unchanged since the last push)."""
    to_send, unchanged_keys = [], []
    single_file = source.is_file()
    for path, relative in local_files(source):
        st = path.stat()
        key = (
            target.key
            if single_file and target.key and not target.key.endswith("/")
            else target.join(relative)
        )
        item = PushItem(path, key, st.st_size, st.st_mtime_ns)
        if only_changed and unchanged(item, head(client, target.bucket, key)):
            unchanged_keys.append(key)
        else:
            to_send.append(item)
    return to_send, unchanged_keys


# -- pull ----------------------------------------------------------------------------------------------
@dataclass
class RemoteObject:
    key: str
    relative: str
    size: int
    etag: str
    last_modified: float
    storage_class: str = "STANDARD"


def list_objects(client, source: S3Url) -> list[RemoteObject]:
    found = []
    paginator = client.get_paginator("list_objects_v2")
    prefix = source.key
    for page in paginator.paginate(Bucket=source.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            relative = relative_name(prefix, key)
            found.append(
                RemoteObject(
                    key,
                    relative,
                    obj["Size"],
                    obj["ETag"],
                    obj["LastModified"].timestamp(),
                    obj.get("StorageClass", "STANDARD"),
                )
            )
    return found


def relative_name(prefix: str, key: str) -> str:
    """A key's path below the prefix, read as a folder: 'run1' and 'run1/' both hold 'run1/a/b.tif' as
    'a/b.tif'; a prefix naming one object gives its base name."""
    if key == prefix:
        return key.rsplit("/", 1)[-1]
    folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    if key.startswith(folder):
        return key[len(folder) :]
    # a partial name ('run1/mov' for 'run1/movie1.tif'): keep the path below the last '/'
    base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    return key[len(base) :]


def local_is_current(path: Path, obj: RemoteObject) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == obj.size and abs(st.st_mtime - obj.last_modified) < 1e-3


class NoSpace(TransferFailed):
    pass


def allocate(partial: Path, dest: Path, size: int) -> None:
    """A fresh partial file of the object's size: no space fails now, before any download."""
    partial.unlink(missing_ok=True)
    with open(partial, "wb") as handle:
        if size:
            try:
                os.posix_fallocate(handle.fileno(), 0, size)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    handle.close()
                    partial.unlink(missing_ok=True)
                    raise NoSpace(
                        f"no space for {dest} ({size} bytes) on its filesystem; free space and run again"
                    ) from None
                raise


def checkable(answer: dict) -> str | None:
    """The checksum of a HeadObject or GetObject answer that a download can be compared with: None for
    a SHA-256 of parts of unknown size (an object not uploaded by us), where the per-part checks must do."""
    expected = sums.object_checksum(answer)
    part_size, multipart = sums.object_layout(answer)
    if sums.object_algorithm(answer) != sums.ALGORITHM and multipart and not part_size:
        return None
    return expected


class Puller:
    """Downloads objects into files: ranged GETs in parallel into `<file>.scipioncloud-partial`, a state
    file beside it lists the finished parts, the whole file is checked against the object's checksum, then
    renamed into place (readers never see a half-written file)."""

    def __init__(
        self,
        client,
        bucket: str,
        *,
        part_size: int = DEFAULT_PART,
        concurrency: int = DEFAULT_CONCURRENCY,
        limiter: TokenBucket | None = None,
        totals: Totals | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.limiter = limiter or TokenBucket(None)
        self.totals = totals or Totals()
        self._finishers: ThreadPoolExecutor | None = None

    def pull_many(self, jobs: list[tuple[RemoteObject, Path]]) -> dict[str, str]:
        """Fetch each (object, destination); {destination: checksum} of those verified and in place."""
        results: dict[str, str] = {}

        def prepare(obj: RemoteObject, dest: Path) -> list[Future]:
            # HeadObject and the partial file, per file; done in a pool of their own so that a file's round
            # trip to S3 overlaps the others' downloads (one after another they were most of a pull's time).
            try:
                return self._submit(pool, obj, dest, results)
            except FAILURES as exc:
                self._failed(dest, exc)
                return []

        preparers = min(4, self.concurrency)
        with (
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="pull") as pool,
            ThreadPoolExecutor(preparers, thread_name_prefix="pull-head") as heads,
            ThreadPoolExecutor(preparers, thread_name_prefix="pull-finish") as finishers,
        ):
            self._finishers = finishers
            prepared: set[Future] = set()
            parts: list[Future] = []
            for obj, dest in jobs:
                prepared.add(heads.submit(prepare, obj, dest))
                while len(prepared) > preparers * 2:  # heads run a little ahead of the downloads, no more
                    done, prepared = wait(prepared, return_when=FIRST_COMPLETED)
                    parts.extend(f for d in done for f in d.result())
            parts.extend(f for d in prepared for f in d.result())
            wait(parts)
        self._finishers = None
        for _obj, dest in jobs:  # every file is in place or failed: none may go missing without a word
            if str(dest) not in results and str(dest) not in self.totals.failed:
                self._failed(dest, TransferFailed(INCOMPLETE))
        return results

    def _failed(self, dest: Path, exc: BaseException) -> None:
        message = str(exc)
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            message = f"S3 refused: {err.get('Message', exc)} ({err.get('Code', '')})"
        elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            message = f"no space left on the filesystem of {dest}; free space and run again (it resumes)"
        with self.totals.lock:
            self.totals.failed[str(dest)] = message
        log.warning("pull to %s failed: %s", dest, message)

    def _place(self, obj: RemoteObject, dest: Path, partial: Path, expected: str | None, got: str | None,
               results: dict) -> None:  # fmt: skip
        """Compare the downloaded file's checksum with the object's, then make it durable and put it in
        place: fsync, the object's mtime, rename (readers never see a half-written or damaged file)."""
        if expected and not sums.same(got, expected):
            partial.unlink(missing_ok=True)
            partial.with_name(partial.name + ".json").unlink(missing_ok=True)
            raise TransferFailed(f"{obj.key}: checksum mismatch after download ({got} != {expected})")
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.utime(partial, (obj.last_modified, obj.last_modified))
        os.replace(partial, dest)
        results[str(dest)] = expected or ""
        with self.totals.lock:
            self.totals.transferred.append(obj.key)
            if not expected:  # nothing to compare with: say so rather than pass it as verified
                self.totals.unverified.append(obj.key)

    def _whole(self, obj: RemoteObject, dest: Path, results: dict) -> None:
        """An object no bigger than a part, in one GET: its answer carries the object's checksum and ETag as
        HeadObject's would, so no HeadObject is asked (a round trip and a request per file;
        bench/bench_data.py, docs/data.md "Figures"), and IfMatch holds it to the version that was listed. The
        checksum is computed as the bytes arrive; nothing to resume in one part: a failed file starts over."""
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            allocate(partial, dest, obj.size)
            self.limiter.take(obj.size)
            answer = self.client.get_object(
                Bucket=self.bucket, Key=obj.key, IfMatch=obj.etag, ChecksumMode="ENABLED"
            )
            expected = checkable(answer)
            algorithm = sums.object_algorithm(answer)
            hasher = None
            if expected and algorithm == sums.ALGORITHM:
                hasher = sums.Crc64()
            elif expected and not sums.object_layout(answer)[1]:
                hasher = hashlib.sha256()
            with sink.PartFile(partial) as into:
                # our hasher is compared with the same checksum botocore's validating body would check
                position = sink.receive(answer["Body"], obj.size, into, 0, hasher, checked=hasher is not None)
            if position != obj.size:
                raise TransferFailed(f"{obj.key}: short read ({position} of {obj.size} bytes)")
            self.totals.add(obj.size)
            if hasher is not None:
                got = sums.b64(hasher.digest())
            else:  # composite SHA-256 of an earlier version: read the file once
                got = sums.checksum_like(partial, answer) if expected else None
            self._place(obj, dest, partial, expected, got, results)
        except FlexibleChecksumError as exc:  # botocore checked S3's checksum of this answer: damaged
            partial.unlink(missing_ok=True)
            self._failed(dest, TransferFailed(f"{obj.key}: checksum mismatch during download ({exc})"))
        except FAILURES as exc:
            partial.unlink(missing_ok=True)  # one part: nothing to resume from, no space held
            self._failed(dest, exc)

    def _submit(self, pool: ThreadPoolExecutor, obj: RemoteObject, dest: Path, results: dict) -> list[Future]:
        if 0 < obj.size <= self.part_size:  # one part: one GET, no HeadObject (see _whole)
            return [pool.submit(self._whole, obj, dest, results)]
        remote = self.client.head_object(Bucket=self.bucket, Key=obj.key, ChecksumMode="ENABLED")
        algorithm = sums.object_algorithm(remote)
        expected = checkable(remote)
        object_part, multipart = sums.object_layout(remote)
        crc = algorithm == sums.ALGORITHM
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        state_path = partial.with_name(partial.name + ".json")
        # Each part's checksum is computed while its bytes arrive, so the file is verified without reading it
        # again. A CRC64NVME (full object) is the parts' CRCs combined, whatever the parts; an object of an
        # earlier version (SHA-256, composite) must come in its own parts, or in one GET when single-part.
        if crc:
            part_size = choose_part_size(obj.size, self.part_size)
        elif multipart and object_part:
            part_size = object_part
        elif not multipart and expected and obj.size <= SINGLE_GET_MAX:
            part_size = max(obj.size, 1)
        else:
            part_size = choose_part_size(obj.size, self.part_size)
        streaming = bool(expected) and (
            crc or part_size == object_part or (not multipart and part_size >= obj.size)
        )
        digests: dict[int, bytes] = {}
        layout = sums.parts_of(obj.size, part_size)
        state = _read_json(state_path)
        done: set[int] = set()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (
            state
            and state.get("etag") == remote["ETag"]
            and state.get("part_size") == part_size
            and partial.exists()
            and partial.stat().st_size == obj.size
        ):
            done = set(state.get("done", []))
        else:
            allocate(partial, dest, obj.size)
            state = {"key": obj.key, "etag": remote["ETag"], "part_size": part_size, "done": []}
            if len(layout) > 1:  # one part: nothing to resume from (a partial without state starts over)
                _write_json(state_path, state)
        lock = threading.Lock()
        failed = threading.Event()
        remaining = [len(layout)]

        def finish() -> None:
            if streaming and len(digests) == len(layout):
                ordered = [digests[n] for n in range(1, len(layout) + 1)]
                if crc:
                    got = sums.full_object(
                        [(d, length) for d, (_, length) in zip(ordered, layout, strict=True)]
                    )
                else:
                    got = sums.composite(ordered) if multipart else sums.b64(ordered[0])
            else:  # parts fetched by an earlier run, or a layout we cannot follow: read the file once
                got = sums.checksum_like(partial, remote) if expected else None
            self._place(obj, dest, partial, expected, got, results)
            state_path.unlink(missing_ok=True)

        def part_done(number: int) -> None:
            with lock:
                remaining[0] -= 1
                done.add(number)
                last = remaining[0] == 0
                if not last:  # the state file is for a resume; after the last part the file is verified
                    state["done"] = sorted(done)
                    _write_json(state_path, state)
            if last and not failed.is_set():
                # verify, fsync and rename in a pool of their own: a download worker that waited for the
                # disk here would leave its connection idle (bench/bench_data.py, docs/data.md)
                if self._finishers is not None:
                    self._finishers.submit(finish_or_fail)
                else:
                    finish_or_fail()

        def finish_or_fail() -> None:
            try:
                finish()
            except (OSError, TransferFailed) as exc:
                failed.set()
                self._failed(dest, exc)

        def run_part(number: int, offset: int, length: int) -> None:
            if failed.is_set():
                return
            try:
                self.limiter.take(length)
                answer = self.client.get_object(
                    Bucket=self.bucket,
                    Key=obj.key,
                    Range=f"bytes={offset}-{offset + length - 1}",
                    IfMatch=remote["ETag"],
                )
                hasher = (sums.Crc64() if crc else hashlib.sha256()) if streaming else None
                with sink.PartFile(partial) as into:
                    position = sink.receive(answer["Body"], length, into, offset, hasher)
                if hasher is not None:
                    digests[number] = hasher.digest()
                if position != offset + length:
                    raise TransferFailed(f"{obj.key}: short read of part {number}")
                self.totals.add(length)
                part_done(number)
            except FlexibleChecksumError as exc:  # botocore checked S3's checksum of this answer: damaged
                if not failed.is_set():
                    failed.set()
                    partial.unlink(missing_ok=True)  # no damaged bytes kept, not even to resume from
                    state_path.unlink(missing_ok=True)
                    message = f"{obj.key}: checksum mismatch during download ({exc})"
                    self._failed(dest, TransferFailed(message))
            except FAILURES as exc:
                if not failed.is_set():
                    failed.set()
                    self._failed(dest, exc)

        futures = []
        if obj.size == 0:
            futures.append(pool.submit(lambda: part_done(1)))
            return futures
        for number, (offset, length) in enumerate(layout, 1):
            if number in done:
                self.totals.add(length, resumed=True)
                part_done(number)
                continue
            futures.append(pool.submit(run_part, number, offset, length))
        return futures


def check_free_space(folder: Path, needed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise NoSpace(
            f"{folder} has {free / 1e9:.2f} GB free but the pull needs {needed / 1e9:.2f} GB more; "
            "free space or pull a narrower prefix"
        )
