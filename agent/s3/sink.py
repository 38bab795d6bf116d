"""A GET's body written into its file at its offset, past the page cache where the filesystem allows.

Why direct I/O (O_DIRECT): a pull writes each byte once and never reads it back (it is checksummed as it
arrives), and it fsyncs every file before the rename that puts it in place. Written through the page cache,
each byte is first copied into a fresh cache page and then written back by the kernel, and the fsync waits
for that writeback anyway; on a pull of terabytes the dirty pages also push out the memory Scipion's jobs
use. Written directly, the bytes go from one reused buffer per worker to the disk. On 1.4 GB pulled from
moto this took the pull's system CPU from 2.5-3.7 s to 0.6-1.0 s and its time from 2.7-3.1 s to 1.7-2.1 s
(bench/bench_data.py; docs/data.md "Figures").

The body is received straight into that buffer (http.client's readinto, under botocore's StreamingBody and
urllib3's response: no new bytes object per read) when it is that plain stack, or botocore's
checksum-validating body when the caller checks the same checksum itself; any other body (a decoded stream,
a validating one nobody else checks) is read in pieces and copied in.

A filesystem without O_DIRECT (EINVAL at open: FUSE mounts, tmpfs before Linux 6.6), a write not aligned to
the block (a file's last piece) or a device that wants another alignment gets ordinary buffered writes; the
fsync before the rename covers both kinds."""

from __future__ import annotations

import errno
import http.client
import mmap
import os
import threading
from pathlib import Path

from botocore.httpchecksum import StreamingChecksumBody
from botocore.response import StreamingBody
from urllib3.response import HTTPResponse

ALIGN = 4096  # O_DIRECT wants offsets, lengths and addresses aligned to the logical block: 512 B or 4 KiB
BUFFER = 1024 * 1024  # per worker; a multiple of ALIGN, so every full buffer is one aligned write
# The copy path's read size. Each read makes new buffers of its size (http.client, then urllib3); at 1 MiB
# glibc maps and unmaps them from the kernel every time, and zeroing those fresh pages cost a pull more
# system CPU than the download itself (1.4 GB pulled with 3.1 s of system CPU at 1 MiB, 1.5 s at 256 KiB).
PIECE = 256 * 1024

_local = threading.local()


def worker_buffer() -> memoryview:
    """This thread's receive buffer, reused for every part: page-aligned, as O_DIRECT needs, and a shared
    mapping (mmap's default), because O_DIRECT into a private one while the process forks can corrupt data
    (open(2), NOTES), and the agent starts programs while it pulls."""
    buffer = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = memoryview(mmap.mmap(-1, BUFFER))
    return buffer


class PartFile:
    """Writes into an existing file at given offsets: direct where aligned and allowed, buffered otherwise."""

    def __init__(self, path: Path, *, direct: bool = True) -> None:
        self.path = path
        self._direct: int | None = None
        self._buffered: int | None = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise

    @property
    def is_direct(self) -> bool:
        return self._direct is not None

    def write(self, data: memoryview, position: int) -> None:
        aligned = len(data) - len(data) % ALIGN  # a file's last piece: its whole blocks direct, the rest not
        if self._direct is not None and position % ALIGN == 0 and aligned:
            try:
                written = os.pwrite(self._direct, data[:aligned], position)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._close_direct()  # the device's block is bigger than ALIGN: buffered from here on
            else:
                data, position = data[written:], position + written
        if not data:
            return
        if self._buffered is None:
            self._buffered = os.open(self.path, os.O_WRONLY)
        while data:
            written = os.pwrite(self._buffered, data, position)
            data, position = data[written:], position + written

    def _close_direct(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None

    def close(self) -> None:
        self._close_direct()
        if self._buffered is not None:
            os.close(self._buffered)
            self._buffered = None

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Pieces:
    """readinto() over any botocore body: its pieces copied into the caller's buffer."""

    def __init__(self, body) -> None:
        self._pieces = body.iter_chunks(PIECE)
        self._rest = memoryview(b"")

    def readinto(self, view: memoryview) -> int:
        if not self._rest:
            self._rest = memoryview(next(self._pieces, b""))
        n = min(len(view), len(self._rest))
        view[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _socket_reader(body, checked: bool) -> tuple[HTTPResponse, http.client.HTTPResponse] | None:
    """(urllib3 response, http.client response) under a plain, undecoded botocore body, else None."""
    if type(body) is not StreamingBody and not (checked and type(body) is StreamingChecksumBody):
        return None  # another subclass reads its own way
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if not isinstance(raw, HTTPResponse) or not isinstance(fp, http.client.HTTPResponse):
        return None
    if raw.headers.get("Content-Encoding", "identity") != "identity":
        return None
    return raw, fp


def receive(body, length: int, into: PartFile, position: int, hasher=None, *, checked: bool = False) -> int:
    """Write up to `length` bytes of `body` into the file from `position`, each piece also fed to `hasher`;
    returns the position after the last byte received (short of position + length if the body ended).
    `checked`: the caller compares `hasher` with the object's checksum itself, so botocore's
    checksum-validating body, which would compute the same checksum a second time, is read past."""
    buffer = worker_buffer()
    plain = _socket_reader(body, checked)
    reader = plain[1] if plain else _Pieces(body)
    filled = 0
    left = length
    while left:
        n = reader.readinto(buffer[filled : min(BUFFER, filled + left)])
        if not n:
            break
        filled += n
        left -= n
        if filled == BUFFER or not left:
            piece = buffer[:filled]
            if hasher is not None:
                hasher.update(piece)
            into.write(piece, position)
            position += filled
            filled = 0
    if filled:  # the body ended early: keep what came, the caller reports the short read
        piece = buffer[:filled]
        if hasher is not None:
            hasher.update(piece)
        into.write(piece, position)
        position += filled
    if plain and not left and plain[1].isclosed():
        plain[0].release_conn()  # read past urllib3: hand its connection back to the pool ourselves
    else:
        body.close()  # not at a clean end: the connection must not be reused
    return position
