"""`scipioncloud data ...`: movies from the microscope PC to S3 and back (push, pull, bucket, restore)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click

from agent.s3 import costs as s3costs
from agent.s3 import transfer
from agent.s3.ratelimit import TokenBucket, parse_rate
from scipioncloud import buckets
from scipioncloud.commands.common import command
from scipioncloud.egress import egress_estimate
from scipioncloud.errors import BadInput, OperationFailed


@click.group()
def data() -> None:
    """Movies: push to S3, pull back, bucket settings, restore from Glacier."""


def s3_client(run, concurrency: int):
    return run.aws.session.client(
        "s3", region_name=run.aws.region_name, config=transfer.client_config(concurrency)
    )


@contextlib.contextmanager
def progress_bar(run, description: str, total: int, totals: transfer.Totals):
    """A rich bar with rate and ETA on a terminal; nothing under --json or when piped."""
    if run.out.as_json or not run.out.err.is_terminal:
        yield
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=run.out.err, transient=False) as bar:
        task = bar.add_task(description, total=total)
        totals.on_bytes = lambda n: bar.advance(task, n)
        yield


def transfer_options(f):
    f = click.option("--bwlimit", help="Bandwidth limit, e.g. 50MB or 200MiB (per second).")(f)
    f = click.option("--concurrency", type=click.IntRange(1, 64), default=transfer.DEFAULT_CONCURRENCY)(f)
    f = click.option(
        "--part-size-mb", type=click.IntRange(5, 5120), default=transfer.DEFAULT_PART // transfer.MiB
    )(f)
    return f


def summary_text(verb: str, result: dict) -> str:
    gb = (result["bytes_done"] - result["bytes_resumed"]) / 1e9
    text = (
        f"{verb} {len(result['transferred'])} file(s), {gb:.3f} GB in {result['seconds']} s"
        f" ({result['mb_s']} MB/s); {len(result['skipped'])} unchanged"
    )
    if result["parts_resumed"]:
        text += f"; {result['parts_resumed']} part(s) resumed from an earlier run"
    for path, reason in result["failed"].items():
        text += f"\nfailed: {path}: {reason}"
    if result.get("endpoint_checks_checksums") is False:
        text += (
            f"\nWARNING: {len(result['unverified'])} file(s) sent but not checked on arrival: this endpoint "
            "keeps the checksums it is sent without checking the bytes; `data pull` checks the bytes against "
            "them, archive reads them back"
        )
    elif result["unverified"]:
        text += (
            f"\nWARNING: {len(result['unverified'])} file(s) moved but not verified end to end: the server "
            f"keeps or confirms no checksum for them (e.g. {result['unverified'][0]})"
        )
    return text


@command(data, "push")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target")
@transfer_options
@click.option("--storage-class", type=click.Choice(["STANDARD", *buckets.STORAGE_CLASSES]))
@click.option("--create-bucket", is_flag=True, help="Create the bucket (private, encrypted) when missing.")
@click.option("--all", "everything", is_flag=True, help="Send every file, even those unchanged in S3.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where unfinished uploads are recorded.")
def push(run, source, target, bwlimit, concurrency, part_size_mb, storage_class, create_bucket, everything,
         state_dir):  # fmt: skip
    """Upload SOURCE (a movie or a folder) to TARGET (s3://BUCKET/PREFIX): parallel, resumable, verified."""
    url = transfer.S3Url.parse(target)
    client = s3_client(run, concurrency)
    bucket_state = buckets.ensure(client, url.bucket, region=run.aws.region_name, create=create_bucket)
    run.out.info(f"bucket {url.bucket}: {', '.join(bucket_state['done'])}")
    items, unchanged = transfer.plan_push(client, source, url, only_changed=not everything)
    totals = transfer.Totals(files=len(items), bytes_total=sum(i.size for i in items))
    totals.skipped.extend(unchanged)
    pusher = transfer.Pusher(
        client,
        url.bucket,
        state_dir=state_dir,
        part_size=part_size_mb * transfer.MiB,
        concurrency=concurrency,
        limiter=TokenBucket(parse_rate(bwlimit)),
        storage_class=storage_class,
        totals=totals,
    )
    run.out.info(
        f"{len(items)} file(s) to send ({totals.bytes_total / 1e9:.3f} GB), {len(unchanged)} unchanged"
    )
    with progress_bar(run, "push", totals.bytes_total, totals):
        pusher.push_many(items)
    # Whether the endpoint checked what it was sent, or only stored our checksums (agent/s3/probe.py); the
    # pusher asked when it confirmed the first upload.
    checked = pusher.endpoint_checks(items[0].key) is True if totals.transferred else None
    result = {**totals.to_json(), "endpoint_checks_checksums": checked}
    run.out.emit({"target": str(url), "bucket": bucket_state, **result}, text=summary_text("sent", result))
    if totals.failed:
        raise SystemExit(1)


@command(data, "pull")
@click.argument("source")
@click.argument("dest", type=click.Path(path_type=Path))
@transfer_options
@click.option("--max-egress-usd", type=float, help="Refuse to start when the egress estimate is higher.")
@click.option("--in-region", is_flag=True, help="DEST is on EC2 in the bucket's region (no egress charge).")
def pull(run, source, dest, bwlimit, concurrency, part_size_mb, max_egress_usd, in_region):
    """Download SOURCE (s3://BUCKET/PREFIX) into the folder DEST; resumable, verified, only new or changed."""
    url = transfer.S3Url.parse(source)
    client = s3_client(run, concurrency)
    objects = transfer.list_objects(client, url)
    if not objects:
        raise BadInput(f"nothing under {url}")
    archived = [o.key for o in objects if o.storage_class in ("GLACIER", "DEEP_ARCHIVE")]
    jobs = [(o, dest / o.relative) for o in objects]
    todo = [(o, d) for o, d in jobs if not transfer.local_is_current(d, o)]
    current = [o.key for o, d in jobs if transfer.local_is_current(d, o)]
    needed = sum(o.size for o, _ in todo)
    egress = egress_estimate(needed, run.aws.region_name, same_region_ec2=in_region)
    run.out.info(f"{len(todo)} object(s), {needed / 1e9:.3f} GB; egress estimate ${egress['usd']:.2f}")
    if max_egress_usd is not None and egress["usd"] > max_egress_usd:
        raise BadInput(f"egress estimate ${egress['usd']:.2f} is above --max-egress-usd {max_egress_usd}")
    if archived:
        raise BadInput(
            f"{len(archived)} object(s) are in Glacier/Deep Archive (e.g. {archived[0]}); "
            "run `scipioncloud data restore` first"
        )
    transfer.check_free_space(dest, needed)
    totals = transfer.Totals(files=len(todo), bytes_total=needed)
    totals.skipped.extend(current)
    puller = transfer.Puller(
        client,
        url.bucket,
        part_size=part_size_mb * transfer.MiB,
        concurrency=concurrency,
        limiter=TokenBucket(parse_rate(bwlimit)),
        totals=totals,
    )
    with progress_bar(run, "pull", needed, totals):
        puller.pull_many(todo)
    result = totals.to_json()
    run.out.emit({"source": str(url), "egress": egress, **result}, text=summary_text("fetched", result))
    if totals.failed:
        raise SystemExit(1)


@command(data, "bucket")
@click.argument("bucket")
@click.option("--create", is_flag=True, help="Create it when missing.")
@click.option("--kms-key", help="Encrypt with this KMS key (default: S3-managed keys, SSE-S3).")
@click.option(
    "--transition",
    multiple=True,
    metavar="DAYS:CLASS",
    help="Lifecycle: move objects to CLASS after DAYS (repeatable), e.g. 30:GLACIER_IR.",
)
@click.option("--prefix", default="", help="Lifecycle applies under this prefix.")
def bucket(run, bucket, create, kms_key, transition, prefix):
    """Make BUCKET private and encrypted at rest (and set its lifecycle); show its settings."""
    transitions = None
    if transition:
        transitions = []
        for text in transition:
            days, _, storage_class = text.partition(":")
            if not days.isdigit() or not storage_class:
                raise BadInput(f"--transition {text!r}: give DAYS:CLASS, e.g. 30:GLACIER_IR")
            transitions.append((int(days), storage_class))
    client = run.aws.client("s3")
    result = buckets.ensure(
        client,
        bucket,
        region=run.aws.region_name,
        create=create,
        kms_key=kms_key,
        lifecycle_prefix=prefix,
        transitions=transitions,
    )
    run.out.emit(result, text=f"{bucket}: {', '.join(result['done'])}")


@command(data, "restore")
@click.argument("source")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--tier", type=click.Choice(["Expedited", "Standard", "Bulk"]), default="Standard")
@click.option("--days", type=click.IntRange(1, 365), default=7, help="Keep the restored copy this long.")
@click.option("--yes", is_flag=True, help="Go ahead after the quote (otherwise only the quote is shown).")
@click.option("--wait/--no-wait", default=True, help="Wait for Glacier restores, then download.")
@click.option("--poll-s", type=float, default=60.0, help="How often to ask whether a restore finished.")
@transfer_options
def restore(run, source, dest, tier, days, yes, wait, poll_s, bwlimit, concurrency, part_size_mb):
    """Bring archived movies under SOURCE back into DEST: quote time and cost, restore, download, verify."""
    url = transfer.S3Url.parse(source)
    client = s3_client(run, concurrency)
    objects = transfer.list_objects(client, url)
    if not objects:
        raise BadInput(f"nothing under {url}")
    quote = s3costs.retrieval_quote(
        [{"size": o.size, "storage_class": o.storage_class} for o in objects], tier
    )
    lines = "\n".join(
        f"  {q['storage_class']}: {q['objects']} object(s), {q['gb']} GB, {q['tier']}, ${q['usd']:.2f}, "
        f"{q['hours'][0]}-{q['hours'][1]} h"
        for q in quote["lines"]
    )
    if not yes:
        run.out.emit(
            {"quote": quote, "started": False},
            text=f"restore quote (prices as of {quote['as_of']}):\n{lines}\nrun again with --yes to go ahead",
        )
        return
    run.out.info(f"restore quote:\n{lines}")
    frozen = [o for o in objects if o.storage_class in ("GLACIER", "DEEP_ARCHIVE")]
    for obj in frozen:
        try:
            client.restore_object(
                Bucket=url.bucket,
                Key=obj.key,
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
            )
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "RestoreAlreadyInProgress":
                raise
    waiting = list(frozen)
    while waiting and wait:
        waiting = [o for o in waiting if 'ongoing-request="false"' not in (
            client.head_object(Bucket=url.bucket, Key=o.key).get("Restore") or "")]  # fmt: skip
        if waiting:
            run.out.info(f"{len(waiting)} restore(s) still running; next look in {poll_s:g} s")
            time.sleep(poll_s)
    if waiting:
        run.out.emit({"quote": quote, "started": True, "waiting": [o.key for o in waiting]})
        return
    jobs = [(o, dest / o.relative) for o in objects if not transfer.local_is_current(dest / o.relative, o)]
    transfer.check_free_space(dest, sum(o.size for o, _ in jobs))
    totals = transfer.Totals(files=len(jobs), bytes_total=sum(o.size for o, _ in jobs))
    puller = transfer.Puller(
        client,
        url.bucket,
        part_size=part_size_mb * transfer.MiB,
        concurrency=concurrency,
        limiter=TokenBucket(parse_rate(bwlimit)),
        totals=totals,
    )
    with progress_bar(run, "restore", totals.bytes_total, totals):
        puller.pull_many(jobs)
    result = totals.to_json()
    run.out.emit({"quote": quote, "started": True, **result}, text=summary_text("restored", result))
    if totals.failed:
        raise OperationFailed(f"{len(totals.failed)} file(s) not restored")


COMMANDS = [data]
