"""Does an S3 endpoint check the checksums it is sent, or only store them?

Amazon S3 computes the checksum of every upload itself and refuses one whose bytes do not match the
x-amz-checksum-* value sent with it (400 BadDigest; S3 user guide, "Checking object integrity"), so the
checksum HeadObject returns afterwards is S3's own word about the stored bytes. Some S3-compatible servers
store the value they are given without checking it: moto (moto/s3/responses.py `_get_checksum` keeps the
request's header as is) and `rclone serve s3` 1.75 (tests/data/test_checksum_probe.py). There, HeadObject
returns our own number back, and a comparison with it proves nothing about the bytes.

The probe asks once per endpoint and bucket: it uploads a small object with a checksum that is deliberately
wrong, beside the object being checked (where the caller may write: a lab's bucket policy may allow only its
archive prefix). Refused with BadDigest: the endpoint checks. Accepted: it does not, and the probe object is
deleted at once. Anything else (no permission, another error): not known to check, which callers treat like
"does not" (the safe side), and the next call asks again."""

from __future__ import annotations

import logging
import threading

from botocore.exceptions import BotoCoreError, ClientError

from agent.s3 import checksums as sums

PROBE_NAME = ".scipioncloud-checksum-probe"
PROBE_BODY = b"scipioncloud: does this endpoint check x-amz-checksum-crc64nvme?\n"
WRONG = sums.b64(sums.part_digest(b"not the probe's bytes"))
# the error codes S3-compatible servers give to bytes that do not match the checksum sent with them
MISMATCH_CODES = {"BadDigest", "XAmzContentChecksumMismatch"}

log = logging.getLogger(__name__)
_known: dict[tuple[str, str], bool] = {}
_lock = threading.Lock()


def probe_key(beside: str) -> str:
    """The probe's key, in the same folder as the key `beside`."""
    folder = beside.rpartition("/")[0]
    return f"{folder}/{PROBE_NAME}" if folder else PROBE_NAME


def checks_checksums(client, bucket: str, beside: str = "") -> bool:
    """True when the endpoint refuses an upload whose bytes do not match its x-amz-checksum-crc64nvme. The
    probe object is written next to the key `beside`."""
    return endpoint_checks(client, bucket, beside) is True


def endpoint_checks(client, bucket: str, beside: str = "") -> bool | None:
    """checks_checksums, with None when the probe got no answer (refused for another reason)."""
    key = probe_key(beside)
    cache_key = (client.meta.endpoint_url, bucket)
    with _lock:
        if cache_key in _known:
            return _known[cache_key]
        try:
            client.put_object(  # sent as our uploads send theirs
                Bucket=bucket,
                Key=key,
                Body=PROBE_BODY,
                ChecksumAlgorithm=sums.ALGORITHM,
                ChecksumCRC64NVME=WRONG,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in MISMATCH_CODES:
                return None  # refused for another reason: not known this time, asked again next time
            answer = True
        except BotoCoreError:
            return None
        else:
            answer = False
            try:
                client.delete_object(Bucket=bucket, Key=key)
            except (ClientError, BotoCoreError) as exc:  # the answer stands; the 66-byte probe stays
                log.warning("could not delete the checksum probe s3://%s/%s: %s", bucket, key, exc)
        _known[cache_key] = answer
        return answer
