"""Which engine should `data pull` GET with? botocore (what the Puller uses) against awscrt's native S3 client
(the engine of boto3's CRT transfer manager), in one process, on the same objects of the same local endpoint
(moto server on 127.0.0.1) in the same run: throughput and client CPU per GB.

  botocore          the Puller as `data pull` runs it: ranged GETs in 8 threads, each chunk written with
                    pwrite and its CRC64NVME computed as it arrives, the file checked, fsynced and renamed.
  crt-ranges        awscrt.s3.S3Client GETs of the same ranges, each chunk handed to Python (on_body) for
                    the same pwrite and CRC: what keeps per-part resume and our own end-to-end check.
  crt-to-file       awscrt.s3.S3Client writing whole objects to files itself (recv_filepath) and validating
                    S3's full-object CRC64NVME itself: CRT's best case, no Python on the data path at all,
                    but no per-part resume.

The CRT client is built as boto3 builds it (boto3/crt.py, s3transfer/crt.py: create_s3_crt_client,
BotocoreCRTCredentialsWrapper, BotocoreCRTRequestSerializer). Every variant's files are compared byte for
byte with the objects. This bench records why `data pull` keeps botocore (docs/data.md, "Pull engine").

    .venv/bin/python bench/bench_pull_engines.py [--files 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import awscrt.s3  # noqa: E402
import boto3  # noqa: E402
from botocore.session import Session  # noqa: E402
from s3transfer.crt import (  # noqa: E402
    BotocoreCRTCredentialsWrapper,
    BotocoreCRTRequestSerializer,
    create_s3_crt_client,
)
from s3transfer.utils import CallArgs  # noqa: E402

from agent.s3 import checksums as sums  # noqa: E402
from agent.s3 import transfer  # noqa: E402
from tests.support import moto_server  # noqa: E402

MiB = 1 << 20
BUCKET = "bench-engines"


class Crt:
    """awscrt's S3 client, built from a botocore client the way boto3/crt.py does."""

    def __init__(self, client) -> None:
        endpoint, region = client.meta.endpoint_url, client.meta.region_name
        credentials = BotocoreCRTCredentialsWrapper(client._get_credentials()).to_crt_credentials_provider()
        self.serializer = BotocoreCRTRequestSerializer(
            Session(), {"region_name": region, "endpoint_url": endpoint}
        )
        # an explicit throughput target: none would make awscrt probe for the EC2 instance type
        self.client = create_s3_crt_client(
            region, credentials, target_throughput=1_250_000_000, use_ssl=endpoint.startswith("https")
        )

    def get(self, key: str, extra: dict, **kwargs) -> awscrt.s3.S3Request:
        call = SimpleNamespace(
            meta=SimpleNamespace(call_args=CallArgs(bucket=BUCKET, key=key, extra_args=extra))
        )
        request = self.serializer.serialize_http_request("get_object", call)
        return self.client.make_request(type=awscrt.s3.S3RequestType.GET_OBJECT, request=request, **kwargs)


def crt_ranges(crt: Crt, objects, expected: dict, dest: Path, part_size: int = transfer.DEFAULT_PART) -> None:
    """Our ranges through CRT, chunks written and CRC'd in Python; each file checked against S3's CRC."""
    pending = []
    for obj in objects:
        path = dest / obj.relative
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        digests = []
        for offset, length in sums.parts_of(obj.size, part_size):
            crc = sums.Crc64()

            def on_body(chunk, offset, fd=fd, crc=crc, **kwargs):
                os.pwrite(fd, chunk, offset)
                crc.update(chunk)

            extra = {"Range": f"bytes={offset}-{offset + length - 1}", "IfMatch": obj.etag}
            digests.append((crc, length))
            pending.append(crt.get(obj.key, extra, on_body=on_body))
        pending.append((fd, obj, digests))
    checks = []
    for item in pending:
        if isinstance(item, tuple):
            checks.append(item)
        else:
            item.finished_future.result()
    for fd, obj, digests in checks:
        os.fsync(fd)
        os.close(fd)
        got = sums.full_object([(crc.digest(), length) for crc, length in digests])
        if got != expected[obj.key]:
            raise RuntimeError(f"crt-ranges: {obj.key} checksum {got} != {expected[obj.key]}")


def crt_to_file(crt: Crt, objects, expected: dict, dest: Path) -> None:
    """Whole objects written by CRT itself, which checks each against its CRC64NVME (known from HeadObject;
    moto's ranged answers carry none for CRT to discover)."""
    validated = []

    def on_done(did_validate_checksum=False, **kwargs):
        validated.append(did_validate_checksum)

    requests = []
    for obj in objects:
        config = awscrt.s3.S3ChecksumConfig(
            expected_checksum=expected[obj.key],
            expected_checksum_algorithm=awscrt.s3.S3ChecksumAlgorithm.CRC64NVME,
            response_validation_mode=awscrt.s3.S3ChecksumValidationMode.FULL_OBJECT,
        )
        path = str(dest / obj.relative)
        requests.append(crt.get(obj.key, {}, recv_filepath=path, checksum_config=config, on_done=on_done))
    for request in requests:
        request.finished_future.result()
    if not all(validated):
        raise RuntimeError("crt-to-file: CRT did not validate every object's checksum")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-engines-", dir="/var/tmp") as folder:
        base = Path(folder)
        server = moto_server.start(base / "moto.log")
        try:
            creds = {k.lower(): v for k, v in moto_server.FAKE_CREDENTIALS.items()}
            client = boto3.client(
                "s3",
                endpoint_url=server.url,
                region_name="eu-west-1",
                config=transfer.client_config(),
                **creds,
            )
            client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
            originals = {}
            for i in range(args.files):
                data = os.urandom((16 + (i * 7) % 25) * MiB)  # the shape of bench_data.py's movies
                originals[f"m/{i:03d}.tiff"] = data
                client.put_object(
                    Bucket=BUCKET,
                    Key=f"m/{i:03d}.tiff",
                    Body=data,
                    ChecksumAlgorithm=sums.ALGORITHM,
                    ChecksumCRC64NVME=sums.b64(sums.part_digest(data)),
                )
            objects = transfer.list_objects(client, transfer.S3Url(BUCKET, "m/"))
            expected = {key: sums.b64(sums.part_digest(data)) for key, data in originals.items()}
            total = sum(o.size for o in objects)
            crt = Crt(client)

            def botocore(dest: Path) -> None:
                totals = transfer.Totals()
                transfer.Puller(client, BUCKET, totals=totals).pull_many(
                    [(o, dest / o.relative) for o in objects]
                )
                if totals.failed:
                    raise RuntimeError(f"botocore: {totals.failed}")

            engines = {
                "botocore": botocore,
                "crt-ranges": lambda dest: crt_ranges(crt, objects, expected, dest),
                "crt-to-file": lambda dest: crt_to_file(crt, objects, expected, dest),
            }
            print(
                f"bench_pull_engines: {len(objects)} objects, {total / 1e9:.3f} GB, moto server {server.url}"
            )
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.rounds):
                for name, run in engines.items():
                    dest = base / name
                    dest.mkdir()
                    start, cpu = time.perf_counter(), time.process_time()
                    run(dest)
                    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
                    for obj in objects:
                        if (dest / obj.relative).read_bytes() != originals[obj.key]:
                            raise RuntimeError(f"{name}: {obj.key} differs from the object")
                    shutil.rmtree(dest)
                    rate = total / seconds / 1e6
                    print(f"  {name:12s} {rate:6.0f} MB/s  CPU {cpu / total * 1e9:4.1f} s/GB")
                    if rate > best.get(name, (0, 0))[0]:
                        best[name] = (rate, cpu / total * 1e9)
        finally:
            server.stop()
    reference = best["botocore"][0]
    print(
        "bench_pull_engines: best of each, throughput / botocore: "
        + ", ".join(f"{name} {rate / reference:.2f}x ({cpu:.1f} s/GB)" for name, (rate, cpu) in best.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
