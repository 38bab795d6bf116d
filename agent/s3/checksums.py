"""S3 additional checksums computed the way S3 does, so a file on disk and an object in a bucket can be
compared without trusting either side's word.

New uploads carry CRC64NVME, S3's default algorithm, computed with awscrt (the AWS Common Runtime that
botocore uses for it; hardware-accelerated, several GB/s a core where SHA-256 made the transfers CPU-bound).
CRC64NVME supports only the FULL_OBJECT checksum type: a multipart object's checksum is the CRC of all its
bytes, whatever the parts (S3 user guide, "Checking object integrity"). Each part's CRC is computed while
its bytes are read or received and the parts' CRCs are combined (awscrt's combine_crc64nvme), so no byte is
read twice and the check does not depend on the part layout.

Objects written by earlier versions carry SHA-256, which S3 supports only as COMPOSITE on multipart
objects: base64(sha256(sha256(part 1) + ... + sha256(part N))) + "-N". Verifying one needs the object's
part size, which our uploads record in its metadata (PART_SIZE_META). Both are read; only CRC64NVME is
written."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from awscrt import checksums as crt

ALGORITHM = "CRC64NVME"  # the S3 ChecksumAlgorithm new uploads ask for (FULL_OBJECT)
LEGACY = "SHA256"  # what objects uploaded before carry (COMPOSITE); read, never written
PART_SIZE_META = "scipioncloud-part-size"  # x-amz-meta-: the part size of a multipart upload
MTIME_META = "scipioncloud-mtime-ns"  # x-amz-meta-: the source file's mtime, to skip unchanged files
READ_CHUNK = 8 * 1024 * 1024


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


# -- CRC64NVME (full object) --------------------------------------------------------------------------
class Crc64:
    """Incremental CRC64NVME of a byte stream."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = crt.crc64nvme(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(8, "big")


def part_digest(data: bytes | memoryview) -> bytes:
    """CRC64NVME of one part, as the 8 big-endian bytes S3 base64-encodes in x-amz-checksum-crc64nvme."""
    return crt.crc64nvme(data).to_bytes(8, "big")


def full_object(parts: list[tuple[bytes, int]]) -> str:
    """The FULL_OBJECT CRC64NVME of consecutive parts given as [(part digest, part length)], in order:
    the CRC of their concatenation, as S3 reports it for the object."""
    value = 0
    for digest, length in parts:
        value = crt.combine_crc64nvme(value, int.from_bytes(digest, "big"), length)
    return b64(value.to_bytes(8, "big"))


# -- SHA-256 (composite), objects of earlier versions --------------------------------------------------
def composite(part_digests: list[bytes]) -> str:
    """The SHA-256 checksum S3 reports for an object made of these parts (one part: the plain checksum)."""
    if len(part_digests) == 1:
        return b64(part_digests[0])
    return f"{b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


def parts_of(size: int, part_size: int | None) -> list[tuple[int, int]]:
    """[(offset, length)] of each part; one part when part_size is None (a single PutObject)."""
    if not part_size or size == 0:
        return [(0, size)]
    return [(offset, min(part_size, size - offset)) for offset in range(0, size, part_size)]


def _read_range(handle, path, offset: int, length: int, update) -> None:
    handle.seek(offset)
    left = length
    while left:
        chunk = handle.read(min(READ_CHUNK, left))
        if not chunk:
            raise OSError(f"{path} is shorter than expected (it changed while being checked)")
        update(chunk)
        left -= len(chunk)


def file_checksum(
    path: Path | str, part_size: int | None, multipart: bool, algorithm: str = ALGORITHM
) -> str:
    """The S3 checksum `path` would have as an object of `algorithm`: CRC64NVME is the CRC of the whole
    file (the layout does not matter); SHA-256 that of one part or of parts of `part_size` bytes."""
    size = os.stat(path).st_size
    with open(path, "rb", buffering=0) as handle:
        if algorithm == ALGORITHM:
            crc = Crc64()
            _read_range(handle, path, 0, size, crc.update)
            return b64(crc.digest())
        if algorithm != LEGACY:
            raise ValueError(f"no way to compute an S3 {algorithm} checksum here")
        layout = parts_of(size, part_size) if multipart else [(0, size)]
        digests = []
        for offset, length in layout:
            h = hashlib.sha256()
            _read_range(handle, path, offset, length, h.update)
            digests.append(h.digest())
    if not multipart:
        return b64(digests[0])
    return composite(digests)


# -- an object's checksum, from its HeadObject answer (asked with ChecksumMode=ENABLED) ----------------
def object_algorithm(head: dict) -> str | None:
    """The algorithm of the checksum we can check in this object: CRC64NVME, SHA256 or None."""
    for algorithm in (ALGORITHM, LEGACY):
        if head.get(f"Checksum{algorithm}"):
            return algorithm
    return None


def metadata(head: dict) -> dict[str, str]:
    """An object's user metadata with lower-case names: HTTP header names are case-blind, S3 sends them in
    lower case, and S3-compatible servers written in Go (rclone serve s3) as `X-Amz-Meta-Scipioncloud-...`,
    which botocore hands on as sent."""
    return {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}


def object_checksum(head: dict) -> str | None:
    algorithm = object_algorithm(head)
    return head.get(f"Checksum{algorithm}") if algorithm else None


def object_layout(head: dict) -> tuple[int | None, bool]:
    """(part size, multipart?) of an object from its HeadObject answer: our metadata, else single part."""
    checksum = object_checksum(head) or ""
    multipart = "-" in checksum or "-" in (head.get("ETag") or "")
    meta = metadata(head)
    part_size = int(meta[PART_SIZE_META]) if meta.get(PART_SIZE_META, "").isdigit() else None
    return part_size, multipart


def checksum_like(path: Path | str, head: dict) -> str | None:
    """The checksum `path` has, computed the way the object of this HeadObject answer was (None when the
    object carries no checksum we can compute)."""
    algorithm = object_algorithm(head)
    if algorithm is None:
        return None
    return file_checksum(path, *object_layout(head), algorithm)


def same(local: str | None, remote: str | None) -> bool:
    """Equal checksums; a composite's "-N" suffix is compared when both sides carry one (moto 5.2 leaves it
    off unless the upload named ChecksumType COMPOSITE)."""
    if not local or not remote:
        return False
    if "-" in local and "-" in remote:
        return local == remote
    return local.split("-")[0] == remote.split("-")[0]
