"""The movie bucket: private (every public-access block on), encrypted at rest, optionally with a lifecycle
policy. The same function checks a bucket the operator already has and brings it to that state."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from scipioncloud.errors import BadInput, OperationFailed

BLOCK_ALL = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
ABORT_INCOMPLETE_DAYS = 30  # unfinished multipart uploads cost storage; a month leaves time to resume
STORAGE_CLASSES = ("STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")


def lifecycle_rules(prefix: str, transitions: list[tuple[int, str]]) -> list[dict]:
    rules: list[dict[str, Any]] = [
        {
            "ID": "scipioncloud-abort-incomplete-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_DAYS},
        }
    ]
    if transitions:
        for days, storage_class in transitions:
            if storage_class not in STORAGE_CLASSES:
                raise BadInput(
                    f"unknown storage class {storage_class!r}; one of {', '.join(STORAGE_CLASSES)}"
                )
            if days < 0:
                raise BadInput("lifecycle days must be 0 or more")
        rules.append(
            {
                "ID": "scipioncloud-movies-tiering",
                "Status": "Enabled",
                "Filter": {"Prefix": prefix},
                "Transitions": [{"Days": d, "StorageClass": c} for d, c in sorted(transitions)],
            }
        )
    return rules


def ensure(
    s3,
    bucket: str,
    *,
    region: str,
    create: bool = True,
    kms_key: str | None = None,
    lifecycle_prefix: str = "",
    transitions: list[tuple[int, str]] | None = None,
) -> dict:
    """Create `bucket` when missing (and `create`), then block public access, turn on default encryption
    and (when asked) set the lifecycle. Returns what was found and done."""
    done: list[str] = []
    try:
        s3.head_bucket(Bucket=bucket)
        existed = True
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("403", "AccessDenied"):
            raise OperationFailed(
                f"bucket {bucket} exists but these credentials may not use it (403); ask its owner for "
                "s3:ListBucket, s3:GetObject and s3:PutObject"
            ) from None
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
        if not create:
            raise BadInput(f"bucket {bucket} does not exist; pass --create-bucket to make it") from None
        params: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**params)
        existed = False
        done.append("created")
    if existed and transitions is None and kms_key is None:
        # A bucket we are given: read its settings and change only what is missing. Users who may only
        # put objects (no s3:PutBucket*) can still push; they are told what the bucket lacks.
        try:
            now = describe(s3, bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            return {"bucket": bucket, "existed": True, "done": [f"settings not readable ({code})"]}
        if now["public_access_blocked"] and now["encryption"]:
            return {"bucket": bucket, "existed": True, "done": ["private and encrypted already"], **now}
        try:
            return _secure(s3, bucket, None, existed, done)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            warning = (
                f"WARNING: bucket is not private and encrypted, and these credentials cannot fix it ({code})"
            )
            return {"bucket": bucket, "existed": True, "done": [warning], **now}
    try:
        result = _secure(s3, bucket, kms_key, existed, done)
    except ClientError as exc:
        if kms_key or transitions is not None:
            raise  # asked for explicitly: a refusal is the answer
        # S3 itself makes new buckets private and encrypted; some S3-compatible servers (rclone serve s3)
        # refuse or misroute these settings. Go on, and say so.
        code = exc.response.get("Error", {}).get("Code", "")
        warning = f"WARNING: the server refused to make the bucket private and encrypted ({code})"
        return {"bucket": bucket, "existed": existed, "done": [*done, warning]}
    if transitions is not None:
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={"Rules": lifecycle_rules(lifecycle_prefix, transitions)},
        )
        result["done"].append("lifecycle set")
        result.update(describe(s3, bucket))
    return result


def _secure(s3, bucket: str, kms_key: str | None, existed: bool, done: list[str]) -> dict:
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=BLOCK_ALL)
    done.append("public access blocked")
    rule: dict[str, Any] = (
        {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key} if kms_key else {"SSEAlgorithm": "AES256"}
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": rule, "BucketKeyEnabled": bool(kms_key)}]
        },
    )
    done.append("default encryption " + rule["SSEAlgorithm"])
    return {"bucket": bucket, "existed": existed, "done": done, **describe(s3, bucket)}


def describe(s3, bucket: str) -> dict:
    """What the bucket's settings are now, read back from S3."""
    try:
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchPublicAccessBlockConfiguration":
            raise
        block = {}
    unencrypted = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": None}}
    try:
        # S3-compatible servers (rclone serve s3) may answer with a configuration that has no rules.
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"].get("Rules")
        encryption = rules[0] if rules else unencrypted
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ServerSideEncryptionConfigurationNotFoundError":
            raise
        encryption = unencrypted
    try:
        lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError:
        lifecycle = []
    return {
        "public_access_blocked": all(block.get(k) for k in BLOCK_ALL),
        "encryption": encryption["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"],
        "lifecycle_rules": [r.get("ID") for r in lifecycle],
    }
