"""S3 additional checksums (SHA-256) computed the way S3 does, so a file on disk and an object in a bucket can
be compared without trusting either side's word.

S3 reports a single-part object's checksum as base64(sha256(bytes)) and a multipart object's as
base64(sha256(sha256(part 1) + ... + sha256(part N))) + "-N" (a "composite" checksum: S3 user guide,
"Checking object integrity", "Using part-level checksums for multipart uploads"). Verifying a file therefore
needs the object's part size, which our uploads record in the object's metadata (PART_SIZE_META)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

ALGORITHM = "SHA256"  # the S3 ChecksumAlgorithm we ask for
PART_SIZE_META = "scipioncloud-part-size"  # x-amz-meta-: the part size of a multipart upload
MTIME_META = "scipioncloud-mtime-ns"  # x-amz-meta-: the source file's mtime, to skip unchanged files
READ_CHUNK = 8 * 1024 * 1024


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def part_digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def composite(part_digests: list[bytes]) -> str:
    """The checksum S3 reports for an object made of these parts (one part: the plain checksum)."""
    if len(part_digests) == 1:
        return b64(part_digests[0])
    return f"{b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


def parts_of(size: int, part_size: int | None) -> list[tuple[int, int]]:
    """[(offset, length)] of each part; one part when part_size is None (a single PutObject)."""
    if not part_size or size == 0:
        return [(0, size)]
    return [(offset, min(part_size, size - offset)) for offset in range(0, size, part_size)]


def file_checksum(path: Path | str, part_size: int | None, multipart: bool) -> str:
    """The S3 checksum `path` would have if uploaded as one part or in parts of `part_size` bytes."""
    size = os.stat(path).st_size
    layout = parts_of(size, part_size) if multipart else [(0, size)]
    digests = []
    with open(path, "rb", buffering=0) as handle:
        for offset, length in layout:
            h = hashlib.sha256()
            handle.seek(offset)
            left = length
            while left:
                chunk = handle.read(min(READ_CHUNK, left))
                if not chunk:
                    raise OSError(f"{path} is shorter than expected (it changed while being checked)")
                h.update(chunk)
                left -= len(chunk)
            digests.append(h.digest())
    if not multipart:
        return b64(digests[0])
    return composite(digests)


def object_checksum(head: dict) -> str | None:
    """The SHA-256 checksum in a HeadObject answer (asked with ChecksumMode=ENABLED), or None."""
    return head.get("ChecksumSHA256")


def object_layout(head: dict) -> tuple[int | None, bool]:
    """(part size, multipart?) of an object from its HeadObject answer: our metadata, else single part."""
    checksum = object_checksum(head) or ""
    multipart = "-" in checksum or "-" in (head.get("ETag") or "")
    meta = head.get("Metadata") or {}
    part_size = int(meta[PART_SIZE_META]) if meta.get(PART_SIZE_META, "").isdigit() else None
    return part_size, multipart


def same(local: str | None, remote: str | None) -> bool:
    """Equal checksums; a composite's "-N" suffix is compared when both sides carry one (moto 5.2 leaves it
    off unless the upload named ChecksumType COMPOSITE)."""
    if not local or not remote:
        return False
    if "-" in local and "-" in remote:
        return local == remote
    return local.split("-")[0] == remote.split("-")[0]
