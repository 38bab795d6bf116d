"""Pre-warming: read every block of a volume once with fio, as AWS documents for volumes restored from a
snapshot, with progress, checkpoints that survive a crash or a reboot, and an optional global rate limit.

fio runs read-only (`--readonly`, O_DIRECT reads); the agent never writes to a device. Progress comes from
fio's JSON status, printed every second. Checkpoints (bytes done, keyed by volume id) live in
`<state_dir>/prewarm/`; an unfinished one resumes on its own when the agent starts again."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agent import aws_volumes
from agent.config import StorageConfig
from agent.errors import ApiError
from agent.inflight import Registry
from agent.volumes import blockdev
from agent.volumes.blockdev import BlockDevice

log = logging.getLogger(__name__)

MiB = 1024 * 1024
BLOCK = MiB  # --bs=1M as AWS documents
IODEPTH = 32
# fio's status interval; every status is checkpointed (a save skipped when a status came a little early let
# two seconds of reading go unsaved). After a crash at most this much reading, plus fio's queue behind the
# checkpoint and the queue in flight, is read twice.
CHECKPOINT_S = 1.0
ACTIVE = ("queued", "running")
FOLLOW_S = 0.5  # how often a job that follows another process's reading looks at its checkpoint


def fio_argv(
    path: str, offset: int, length: int, *, bs: int = BLOCK, rate_bytes_s: int | None = None
) -> list[str]:
    """The fio command for one range. setpriv --pdeathsig and --thread (one process, no forked job
    process): fio dies with the agent and is never left reading on its own."""
    argv = [
        "setpriv", "--pdeathsig", "KILL", "--",
        "fio", "--name=prewarm", f"--filename={path}", "--rw=read", f"--bs={bs}",
        f"--iodepth={IODEPTH}", "--ioengine=libaio", "--direct=1", "--readonly", "--thread",
        f"--offset={offset}", f"--size={length}",
        "--output-format=json", f"--status-interval={CHECKPOINT_S:g}",
    ]  # fmt: skip
    if rate_bytes_s:
        argv.append(f"--rate={int(rate_bytes_s)}")
    return argv


def json_documents(stream: IO[str]) -> Iterator[dict]:
    """fio prints one pretty JSON object per status interval; each starts with '{' and ends with '}' in
    the first column."""
    buffer: list[str] = []
    for line in stream:
        if line.startswith("{"):
            buffer = [line]
        elif buffer:
            buffer.append(line)
            if line.startswith("}"):
                try:
                    yield json.loads("".join(buffer))
                except ValueError:
                    log.warning("fio printed a status that is not JSON; skipped")
                buffer = []


def read_bytes(document: dict) -> int:
    return sum(job.get("read", {}).get("io_bytes", 0) for job in document.get("jobs", []))


class FioError(RuntimeError):
    pass


def read_range(
    path: str,
    offset: int,
    length: int,
    *,
    bs: int = BLOCK,
    rate_bytes_s: int | None = None,
    on_progress: Callable[[int], None] = lambda done: None,
    stop: threading.Event | None = None,
) -> tuple[int, bool]:
    """Read [offset, offset+length) with fio, reporting bytes read; returns (bytes read, finished)."""
    return run_fio(
        fio_argv(path, offset, length, bs=bs, rate_bytes_s=rate_bytes_s),
        length,
        lambda document: on_progress(read_bytes(document)),
        stop,
    )


def run_fio(
    argv: list[str], total: int, on_status: Callable[[dict], None], stop: threading.Event | None = None
) -> tuple[int, bool]:
    """Run one fio with JSON status output: on_status(document) for each status, a stop request ends it at
    once. Returns (bytes read, finished: exit 0, not stopped, `total` bytes read)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = 0
    if stop is not None:
        # A stop request ends fio at once; its status stream then closes and the loop below returns.
        # Not joined: it notices fio's end within 0.1 s on its own, and the read must not wait for it.
        def watch() -> None:
            while process.poll() is None:
                if stop.wait(0.1):
                    if process.poll() is None:
                        process.terminate()
                    return

        threading.Thread(target=watch, name="fio-watch", daemon=True).start()
    try:
        for document in json_documents(process.stdout):  # type: ignore[arg-type]
            done = read_bytes(document)
            on_status(document)
        stderr = process.stderr.read() if process.stderr else ""
        returncode = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
    stopped = stop is not None and stop.is_set()
    if returncode != 0 and not stopped:
        raise FioError(f"fio exited with {returncode}: {stderr.strip()[-500:]}")
    return done, (returncode == 0 and not stopped and done >= total)


@dataclass
class Checkpoint:
    identity: str
    size: int
    done: int = 0
    state: str = "running"  # running (resume on start), done, cancelled, skipped
    reason: str | None = None
    updated: float = field(default_factory=time.time)
    # What `done` counts: "used" = bytes of the filesystem's used blocks, "all" = the device from offset 0;
    # None = written before the two existed (read as before). A resume in the other mode starts over.
    mode: str | None = None
    read_all: bool = False  # the request asked for every block (a resume after a restart keeps asking)


class CheckpointStore:
    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / "prewarm"

    def _path(self, identity: str) -> Path:
        return self.folder / (hashlib.sha256(identity.encode()).hexdigest()[:24] + ".json")

    def lock_path(self, identity: str) -> Path:
        return self._path(identity).with_suffix(".lock")

    def load(self, identity: str) -> Checkpoint | None:
        try:
            data = json.loads(self._path(identity).read_text())
            return Checkpoint(**data) if data.get("identity") == identity else None
        except (OSError, ValueError, TypeError):
            return None

    def save(self, checkpoint: Checkpoint) -> None:
        """Atomic: a crash mid-save leaves the previous checkpoint."""
        self.folder.mkdir(parents=True, exist_ok=True)
        checkpoint.updated = time.time()
        path = self._path(checkpoint.identity)
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            json.dump(checkpoint.__dict__, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def all(self) -> list[Checkpoint]:
        found = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                found.append(Checkpoint(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                log.warning("unreadable checkpoint %s ignored", path)
        return found


class ReaderLock:
    """Who reads a volume now, across processes (the server and `scipioncloud-agent prewarm`): an flock on
    `<state_dir>/prewarm/<volume>.lock`, released by the kernel when its holder ends, even on SIGKILL."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.handle = open(path, "a+")  # noqa: SIM115 - held for the whole reading, closed in release()

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return True

    def holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text().strip() or "?"
        return "?"

    def release(self) -> None:
        self.handle.close()  # closing drops the flock


@dataclass
class Job:
    id: str
    volume: str
    identity: str
    device: str
    size: int
    logical_block_size: int
    volume_id: str | None
    resumed_from: int = 0
    resume_mode: str | None = None  # the checkpoint's mode that resumed_from counts in
    read_all: bool = False  # every block, not only the filesystem's used ones (per request)
    done: int = 0
    state: str = "queued"  # queued, running, done, skipped, cancelled, failed, stopped
    reason: str | None = None
    error: str | None = None
    aws: dict | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    mb_s: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    shutdown: threading.Event = field(default_factory=threading.Event)
    restart: threading.Event = field(default_factory=threading.Event)
    interrupt: threading.Event = field(default_factory=threading.Event)  # any of the three: stop fio now
    thread: threading.Thread | None = None
    rate_window: tuple[float, int] = (0.0, 0)  # (monotonic time, bytes done) where the mb_s window began

    def start_rate_window(self) -> None:
        self.rate_window = (time.monotonic(), self.done)

    def advance(self, done: int, now: float) -> None:
        """Progress to `done` bytes; mb_s is the rate over the last half second or more."""
        self.done = done
        since, done_then = self.rate_window
        if now - since >= 0.5:
            self.mb_s = (done - done_then) / (now - since) / 1e6
            self.rate_window = (now, done)

    def to_json(self) -> dict:
        percent = round(100.0 * self.done / self.size, 2) if self.size else 100.0
        remaining = self.size - self.done
        eta = round(remaining / (self.mb_s * 1e6), 1) if self.mb_s and self.state == "running" else None
        return {
            "id": self.id,
            "volume": self.volume,
            "device": self.device,
            "state": self.state,
            "bytes_done": self.done,
            "bytes_total": self.size,
            "percent": percent,
            "mb_s": round(self.mb_s, 1) if self.mb_s is not None else None,
            "eta_s": 0 if self.state == "done" else eta,
            "resumed_from": self.resumed_from,
            "read_all": self.read_all,
            "reason": self.reason,
            "error": self.error,
            "aws": self.aws,
            "started": self.started,
            "finished": self.finished,
        }


class PrewarmManager:
    """Runs pre-warm jobs in threads, shares the global rate limit between them, keeps checkpoints."""

    def __init__(
        self,
        storage: StorageConfig,
        *,
        aws_status: Callable[[str], dict | None] | None = None,
        inflight: Registry | None = None,
    ) -> None:
        self.storage = storage
        # While a job reads, the idle rule sees work in flight (agent/inflight.py); none from the CLI.
        self.inflight = inflight
        self.store = CheckpointStore(storage.state_dir)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.aws_status = aws_status or (
            lambda volume_id: aws_volumes.initialization_status(volume_id, timeout=storage.aws_timeout_s)
        )
        self._starter: threading.Thread | None = None

    # -- service: resume unfinished jobs (and pre-warm everything with prewarm_auto) when the agent starts
    def start(self) -> None:
        self._starter = threading.Thread(target=self.resume_all, name="prewarm-resume", daemon=True)
        self._starter.start()

    def stop(self) -> None:
        """Stop every job where it is; its checkpoint stays 'running', so the next start resumes it."""
        if self._starter is not None:
            self._starter.join(30)
        with self.lock:
            jobs = [j for j in self.jobs.values() if j.thread is not None]
        for job in jobs:
            job.shutdown.set()
            job.interrupt.set()
        for job in jobs:
            job.thread.join(30)

    def resume_all(self, devices: list[BlockDevice] | None = None) -> list[Job]:
        """Resume every unfinished checkpoint; with prewarm_auto, also start every volume not done yet."""
        started: list[Job] = []
        try:
            devices = blockdev.discover(self.storage) if devices is None else devices
        except Exception:
            log.exception("pre-warm: device discovery failed; nothing resumed")
            return started
        unfinished = {c.identity for c in self.store.all() if c.state == "running"}
        for device in devices:
            if device.state == "root":
                continue
            if device.identity in unfinished or (self.storage.prewarm_auto and self._auto_wanted(device)):
                try:
                    checkpoint = self.store.load(device.identity)
                    read_all = bool(checkpoint and checkpoint.state == "running" and checkpoint.read_all)
                    started.append(self.start_job(device, read_all=read_all))
                except ApiError as exc:
                    log.info("pre-warm of %s not started: %s", device.path, exc.message)
        return started

    def _auto_wanted(self, device: BlockDevice) -> bool:
        checkpoint = self.store.load(device.identity)
        return checkpoint is None or checkpoint.state == "running"

    # -- jobs
    def list(self) -> list[dict]:
        with self.lock:
            return [job.to_json() for job in self.jobs.values()]

    def get(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no pre-warm job {job_id!r}; GET /v1/prewarm lists them")
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state in ACTIVE:
            job.cancel.set()
            job.interrupt.set()
            if job.thread is not None:
                job.thread.join(30)
        return job

    def active_for(self, identity: str) -> Job | None:
        with self.lock:
            for job in self.jobs.values():
                if job.identity == identity and job.state in ACTIVE:
                    return job
        return None

    def start_job(self, device: BlockDevice, *, force: bool = False, read_all: bool = False) -> Job:
        """Start (or resume from its checkpoint) the pre-warm of `device`; an active job is returned as is.
        read_all: every block, even where the used ones are known (storage.prewarm_used_only)."""
        if device.state == "root":
            raise ApiError(409, f"{device.path} holds the root filesystem; the agent never touches it")
        with self.lock:
            for job in self.jobs.values():
                if job.identity == device.identity and job.state in ACTIVE:
                    return job
            checkpoint = self.store.load(device.identity)
            if checkpoint is not None and checkpoint.size != device.size:
                checkpoint = None  # a different (resized) volume: start over
            job = Job(
                id=uuid.uuid4().hex[:12],
                volume=device.address,
                identity=device.identity,
                device=device.path,
                size=device.size,
                logical_block_size=device.logical_block_size,
                volume_id=device.volume_id,
                read_all=read_all,
            )
            if checkpoint is not None and read_all and checkpoint.mode == "used":
                checkpoint = None  # only the used blocks were read: a full read starts over
            if checkpoint is not None and not force:
                if checkpoint.state in ("done", "skipped"):
                    job.state, job.done, job.reason = (
                        checkpoint.state,
                        device.size,
                        checkpoint.reason or ("already pre-warmed; pass force to read it again"),
                    )
                    job.finished = checkpoint.updated
                    self.jobs[job.id] = job
                    return job
                job.resumed_from = job.done = min(checkpoint.done, device.size)
                job.resume_mode = checkpoint.mode
            self.jobs[job.id] = job
            job.thread = threading.Thread(target=self._run, args=(job, force), name=f"prewarm-{job.id}")
            job.thread.daemon = True
            job.thread.start()
        return job

    def _share(self) -> int | None:
        """This job's part of the global rate limit, in bytes/s."""
        if not self.storage.prewarm_rate_mb_s:
            return None
        with self.lock:
            running = sum(1 for j in self.jobs.values() if j.state in ACTIVE) or 1
        return max(int(self.storage.prewarm_rate_mb_s * 1e6 / running), 4096)

    def _rebalance(self) -> None:
        if self.storage.prewarm_rate_mb_s:
            with self.lock:
                for job in self.jobs.values():
                    if job.state == "running":
                        job.restart.set()
                        job.interrupt.set()

    def _run(self, job: Job, force: bool) -> None:
        in_flight = self.inflight.track("prewarm", job.device) if self.inflight else contextlib.nullcontext()
        try:
            with in_flight:
                self._read(job, force)
        except Exception as exc:
            log.exception("pre-warm of %s failed", job.device)
            job.state, job.error = "failed", str(exc)
        finally:
            job.finished = time.time()
            self._rebalance()

    def _read(self, job: Job, force: bool) -> None:
        if job.volume_id:
            job.aws = self.aws_status(job.volume_id)
            reason = aws_volumes.skip_reason(job.aws)
            if reason and not force:
                job.state, job.reason, job.done = "skipped", reason, job.size
                self.store.save(Checkpoint(job.identity, job.size, job.size, "skipped", reason))
                return
        lock = ReaderLock(self.store.lock_path(job.identity))
        try:
            if not lock.try_acquire() and not self._follow(job, lock):
                return
            self._read_locked(job)
        finally:
            lock.release()

    def _follow(self, job: Job, lock: ReaderLock) -> bool:
        """Another process reads this volume: show its progress (from its checkpoints) instead of reading
        twice. True when it has stopped without finishing and this job must read the rest."""
        job.state = "running"
        job.reason = f"read by another process (pid {lock.holder()}); following its progress"
        while not lock.try_acquire():
            if job.interrupt.wait(FOLLOW_S) and (job.cancel.is_set() or job.shutdown.is_set()):
                job.state = "cancelled" if job.cancel.is_set() else "stopped"
                job.reason = "cancelled by request" if job.cancel.is_set() else job.reason
                return False
            job.interrupt.clear()
            checkpoint = self.store.load(job.identity)
            if checkpoint is not None and checkpoint.size == job.size:
                job.done = checkpoint.done
        checkpoint = self.store.load(job.identity)
        if checkpoint is not None and checkpoint.size == job.size and checkpoint.state == "done":
            job.state, job.done, job.reason = "done", job.size, "read by another process"
            return False
        job.reason = None
        if checkpoint is not None and checkpoint.size == job.size:
            job.done = job.resumed_from = checkpoint.done  # it stopped or died: go on from its checkpoint
        return True

    def _read_locked(self, job: Job) -> None:
        ranges = None
        if self.storage.prewarm_used_only and not job.read_all:  # only the blocks in use (issue 14)
            from agent.volumes import prewarm_ranges  # it imports this module

            ranges = prewarm_ranges.used_ranges(job.device, job.size)
        mode = "all" if ranges is None else "used"
        if job.resume_mode is not None and job.resume_mode != mode:
            job.done = job.resumed_from = 0  # the checkpoint counts in the other mode: read from the start
        if ranges is not None:
            return prewarm_ranges.run_job(self, job, ranges, Checkpoint)
        job.state = "running"
        self._rebalance()
        checkpoint = Checkpoint(job.identity, job.size, job.done, mode="all", read_all=job.read_all)
        self.store.save(checkpoint)
        aligned_end = job.size // BLOCK * BLOCK
        job.start_rate_window()
        while job.done < job.size:
            job.restart.clear()
            job.interrupt.clear()
            if job.cancel.is_set() or job.shutdown.is_set():
                break
            offset = job.done
            # The last partial megabyte, if any, is read in logical blocks: O_DIRECT needs aligned sizes.
            bs = BLOCK if offset < aligned_end else job.logical_block_size
            end = aligned_end if offset < aligned_end else job.size
            last_save = time.monotonic()

            def progress(read: int, offset: int = offset, bs: int = bs) -> None:
                nonlocal last_save
                now = time.monotonic()
                job.advance(offset + read, now)
                if now - last_save >= CHECKPOINT_S / 2:  # every status; fio's own interval sets the pace
                    # Reads still in flight may complete out of order: resume behind them.
                    checkpoint.done = max(offset, (offset + read - IODEPTH * bs) // bs * bs)
                    self.store.save(checkpoint)
                    last_save = now

            _read, finished = read_range(
                job.device,
                offset,
                end - offset,
                bs=bs,
                rate_bytes_s=self._share(),
                on_progress=progress,
                stop=job.interrupt,
            )
            if finished:
                job.done = end
            elif not (job.cancel.is_set() or job.shutdown.is_set() or job.restart.is_set()):
                raise FioError(f"fio stopped at {job.done} of {job.size} bytes without an error")
            checkpoint.done = max(offset, (job.done - (0 if finished else IODEPTH * bs)) // bs * bs)
            if not finished:
                job.done = checkpoint.done
        if job.cancel.is_set():
            job.state, job.reason = "cancelled", "cancelled by request"
            checkpoint.state = "cancelled"
        elif job.shutdown.is_set():
            job.state, job.reason = "stopped", "agent stopping; resumes from the checkpoint on next start"
        else:
            job.state, job.done = "done", job.size
            checkpoint.state, checkpoint.done = "done", job.size
        self.store.save(checkpoint)
