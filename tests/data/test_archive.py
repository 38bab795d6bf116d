"""The agent's movie tiering against real Scipion projects (made and run by pyworkflow, protocols of the
test domain tests/support/scipion_movies) and S3 on 127.0.0.1 (moto server), through the agent's routes."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.app import create_app
from agent.config import from_dict
from tests.conftest import TOKEN, agent_config_dict
from tests.data.conftest import MiB, make_movie
from tests.support.openapi_contract import ContractClient
from tests.support.scipion_project import make_project

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_metrics(client) -> dict[tuple, float]:
    """{(sample name, label value): value} of the data collector, parsed from the real /metrics text."""
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    return {
        (s.name, *s.labels.values()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("scipioncloud_data_") or s.labels.get("collector") == "data"
    }


def agent(tmp_path: Path, projects: list[dict], **data) -> tuple:
    lines = []
    for p in projects:
        lines.append("[[project]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
    policy_file = tmp_path / "data-policy.toml"
    policy_file.write_text("\n".join(lines) + "\n")
    config = from_dict(agent_config_dict(tmp_path, data={"policy_file": str(policy_file), **data}))
    app = create_app(config, token=TOKEN)
    app.test_client_class = ContractClient  # every answer keeps the OpenAPI contract (real projects)
    return app.test_client(), config


@pytest.fixture
def movies(tmp_path) -> Path:
    folder = tmp_path / "ebs" / "movies"
    for i in range(3):
        make_movie(folder / f"mov_{i:02d}.tif", 6 * MiB + i * 1001, seed=i)
    make_movie(folder / "mov_keep_03.tif", 2 * MiB, seed=7)
    return folder


@pytest.fixture
def bucket(s3):
    s3.create_bucket(Bucket="lab-archive", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return "lab-archive"


def policy(project: dict, **extra) -> dict:
    return {
        "path": project["path"],
        "bucket": "lab-archive",
        "prefix": "archive/p1/",
        "storage_class": "GLACIER_IR",
        "delay_min": 0,
        "keep": ["*_keep_*"],
        **extra,
    }


def test_archive_aligned_movies_then_restore_bytes_identical(tmp_path, movies, bucket, s3):
    originals = {p.name: digest(p) for p in movies.iterdir()}
    project = make_project(tmp_path, "p1", movies, [{}])
    assert project["aligns"][0]["status"] == "finished"
    client, _config = agent(tmp_path, [policy(project)])

    plan = client.get("/v1/data/projects/p1/plan", headers=AUTH).get_json()
    actions = {Path(m["movie"]).name: m["action"] for m in plan["movies"]}
    assert actions == {"mov_00.tif": "archive", "mov_01.tif": "archive", "mov_02.tif": "archive",
                       "mov_keep_03.tif": "keep"}  # fmt: skip
    assert plan["saving"]["saving_usd_month"] >= 0 and plan["bytes_to_archive"] == sum(
        (movies / f"mov_{i:02d}.tif").stat().st_size for i in range(3)
    )
    dry = client.post("/v1/data/projects/p1/archive", json={"dry_run": True}, headers=AUTH).get_json()
    assert dry["dry_run"] and all((movies / n).exists() for n in originals)

    done = client.post("/v1/data/projects/p1/archive", headers=AUTH).get_json()
    assert done["failed"] == {} and len(done["archived"]) == 3
    assert done["bytes_freed"] == plan["bytes_to_archive"]
    for i in range(3):
        name = f"mov_{i:02d}.tif"
        assert not (movies / name).exists()
        placeholder = json.loads((movies / f"{name}.s3.json").read_text())
        head = s3.head_object(Bucket=bucket, Key=f"archive/p1/{name}")
        assert (
            head["StorageClass"] == "GLACIER_IR" and placeholder["url"] == f"s3://{bucket}/archive/p1/{name}"
        )
    assert (movies / "mov_keep_03.tif").exists()
    state = client.get("/v1/data", headers=AUTH).get_json()["projects"]["p1"]
    assert state["archived"] == 3 and state["bytes_freed"] == done["bytes_freed"] and state["pending"] == 0
    seen = data_metrics(client)
    assert seen[("scipioncloud_data_archived_movies", "p1")] == 3
    assert seen[("scipioncloud_data_freed_bytes", "p1")] == done["bytes_freed"]
    assert seen[("scipioncloud_data_pending_movies", "p1")] == 0
    assert seen[("scipioncloud_data_restored_movies", "p1")] == 0
    assert seen[("scipioncloud_data_transfer_errors_total", "archive")] == 0
    assert seen[("scipioncloud_scrape_collector_success", "data")] == 1

    quote = client.post("/v1/data/projects/p1/restore", json={}, headers=AUTH).get_json()
    assert quote["started"] is False and quote["quote"]["lines"][0]["storage_class"] == "GLACIER_IR"
    assert not (movies / "mov_00.tif").exists()
    back = client.post("/v1/data/projects/p1/restore", json={"confirm": True}, headers=AUTH).get_json()
    assert back["failed"] == {} and len(back["restored"]) == 3
    assert {p.name: digest(p) for p in movies.iterdir()} == originals  # placeholders gone, bytes identical
    state = client.get("/v1/data", headers=AUTH).get_json()["projects"]["p1"]
    assert state["archived"] == 0 and state["bytes_freed"] == 0 and state["restored"] == 3
    seen = data_metrics(client)
    assert seen[("scipioncloud_data_restored_movies", "p1")] == 3
    assert seen[("scipioncloud_data_freed_bytes", "p1")] == 0


def test_nothing_freed_while_a_protocol_still_reads_the_movies(tmp_path, movies, bucket, s3):
    hold = tmp_path / "hold"
    hold.touch()
    try:
        # One alignment finished; a second one (streaming-style, still running) reads the same movies.
        project = make_project(tmp_path, "p1", movies, [{}, {"hold": str(hold), "produce": False}])
        client, _ = agent(tmp_path, [policy(project)])
        done = client.post("/v1/data/projects/p1/archive", headers=AUTH).get_json()
        actions = {Path(m["movie"]).name: m["action"] for m in done["movies"]}
        assert actions["mov_00.tif"] == "blocked" and "still read it" in done["movies"][0]["reason"]
        assert done["archived"] == [] and done["bytes_freed"] == 0
        assert all((movies / f"mov_{i:02d}.tif").exists() for i in range(3))
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    finally:
        hold.unlink()  # the held run ends on its own
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # once it has finished, the movies may go
        plan = client.get("/v1/data/projects/p1/plan", headers=AUTH).get_json()
        if plan["counts"].get("archive") == 3:
            break
        time.sleep(0.3)
    assert plan["counts"].get("archive") == 3, plan["counts"]
    assert data_metrics(client)[("scipioncloud_data_pending_movies", "p1")] == 3


def test_not_aligned_not_covered_and_deep_archive_restore(tmp_path, movies, bucket, s3):
    # A project whose alignment produced nothing: nothing is aligned, nothing archived.
    project = make_project(tmp_path, "p1", movies, [{"produce": False}])
    client, _ = agent(tmp_path, [policy(project, storage_class="DEEP_ARCHIVE")])
    done = client.post("/v1/data/projects/p1/archive", headers=AUTH).get_json()
    assert done["counts"] == {"not-aligned": 3, "keep": 1} and done["archived"] == []
    answer = client.post("/v1/data/projects/other/archive", headers=AUTH)
    assert answer.status_code == 404 and "no policy" in answer.get_json()["error"]
    answer = client.post("/v1/data/projects/p1/archive", json={"dry_run": "yes"}, headers=AUTH)
    assert answer.status_code == 400


def test_deep_archive_restore_waits_for_glacier(tmp_path, movies, bucket, s3):
    project = make_project(tmp_path, "p1", movies, [{}])
    copy = {p.name: digest(p) for p in movies.iterdir()}
    client, _ = agent(tmp_path, [policy(project, storage_class="DEEP_ARCHIVE", keep=[])])
    done = client.post("/v1/data/projects/p1/archive", headers=AUTH).get_json()
    assert len(done["archived"]) == 4
    # moto keeps any checksum it is sent (agent/s3/probe.py): each movie went up in STANDARD, was read back
    # and compared, then copied into DEEP_ARCHIVE; the probe left nothing behind.
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert len(listed) == 4 and {o["StorageClass"] for o in listed} == {"DEEP_ARCHIVE"}
    quote = client.post("/v1/data/projects/p1/restore", json={"tier": "Bulk"}, headers=AUTH).get_json()
    (line,) = quote["quote"]["lines"]
    assert line["storage_class"] == "DEEP_ARCHIVE" and line["hours"] == [48, 48] and line["restore_needed"]
    expedited = client.post("/v1/data/projects/p1/restore", json={"tier": "Expedited"}, headers=AUTH)
    assert expedited.status_code == 400 and "no Expedited" in expedited.get_json()["error"]  # not a 500
    first = client.post(
        "/v1/data/projects/p1/restore", json={"confirm": True, "movies": ["mov_00.tif"]}, headers=AUTH
    ).get_json()
    # moto completes a restore at once; AWS takes hours: the first call only asks for it.
    assert first["waiting"] == [str(movies / "mov_00.tif")] and first["restored"] == []
    head = s3.head_object(Bucket=bucket, Key="archive/p1/mov_00.tif")
    assert "ongoing-request" in head["Restore"]
    second = client.post(
        "/v1/data/projects/p1/restore", json={"confirm": True, "movies": ["mov_00.tif"]}, headers=AUTH
    ).get_json()
    assert second["restored"] == [str(movies / "mov_00.tif")]
    assert digest(movies / "mov_00.tif") == copy["mov_00.tif"]


def test_follow_places_complete_verified_movies(tmp_path, bucket, s3):
    from agent.data import follow
    from agent.s3 import transfer

    src = tmp_path / "microscope"
    make_movie(src / "a.tif", 7 * MiB, seed=1)
    make_movie(src / "b.tif", 1 * MiB, seed=2)
    import boto3

    client = boto3.client("s3")
    items, _ = transfer.plan_push(client, src, transfer.S3Url(bucket, "incoming/"))
    transfer.Pusher(client, bucket, state_dir=tmp_path / "st", part_size=5 * MiB).push_many(items)
    # an upload still in progress is not an object yet: it must not appear
    s3.create_multipart_upload(Bucket=bucket, Key="incoming/c.tif")
    watched = tmp_path / "ebs" / "incoming"
    follower = follow.Follower(
        lambda: boto3.client("s3"), [follow.Follow(transfer.S3Url(bucket, "incoming/"), watched)]
    )
    follower.tick()
    assert sorted(p.name for p in watched.iterdir()) == ["a.tif", "b.tif"]
    assert digest(watched / "a.tif") == digest(src / "a.tif")
    state = follower.follows[0].to_json()
    assert state["placed"] == 2 and state["bytes_placed"] == 8 * MiB
    follower.tick()  # nothing new: nothing placed again
    assert follower.follows[0].to_json()["placed"] == 2
    shutil.rmtree(src)


def test_never_overwrites_an_object_with_other_bytes(tmp_path, movies, bucket, s3):
    project = make_project(tmp_path, "p1", movies, [{}])
    s3.put_object(Bucket=bucket, Key="archive/p1/mov_01.tif", Body=b"somebody else's movie")
    client, _ = agent(tmp_path, [policy(project)])
    done = client.post("/v1/data/projects/p1/archive", headers=AUTH).get_json()
    assert "not overwriting" in done["failed"][str(movies / "mov_01.tif")]
    assert data_metrics(client)[("scipioncloud_data_transfer_errors_total", "archive")] == 1
    assert (movies / "mov_01.tif").exists() and len(done["archived"]) == 2
    assert (
        s3.get_object(Bucket=bucket, Key="archive/p1/mov_01.tif")["Body"].read() == b"somebody else's movie"
    )
    # a movie put back by hand is not overwritten by a restore
    (movies / "mov_00.tif").write_bytes(b"new")
    back = client.post("/v1/data/projects/p1/restore", json={"confirm": True}, headers=AUTH).get_json()
    assert "exists again" in back["failed"][str(movies / "mov_00.tif")]
    assert (movies / "mov_00.tif").read_bytes() == b"new" and back["restored"] == [str(movies / "mov_02.tif")]
    assert data_metrics(client)[("scipioncloud_data_transfer_errors_total", "restore")] == 1


def test_a_run_stopped_before_the_copy_into_deep_archive_is_finished(tmp_path, movies, bucket, s3):
    # On an endpoint that does not check checksums (moto), a Deep Archive movie goes up in STANDARD first;
    # a run that stopped there leaves it in STANDARD. The next run verifies it and copies it into its class.
    project = make_project(tmp_path, "p1", movies, [{}])
    movie = movies / "mov_01.tif"
    s3.put_object(Bucket=bucket, Key="archive/p1/mov_01.tif", Body=movie.read_bytes(),
                  ChecksumAlgorithm="CRC64NVME")  # fmt: skip
    client, _ = agent(tmp_path, [policy(project, storage_class="DEEP_ARCHIVE")])
    done = client.post("/v1/data/projects/p1/archive", headers=AUTH).get_json()
    assert done["failed"] == {} and str(movie) in done["archived"], done
    head = s3.head_object(Bucket=bucket, Key="archive/p1/mov_01.tif")
    assert head["StorageClass"] == "DEEP_ARCHIVE" and not movie.exists()


def test_a_project_that_cannot_be_read_is_a_503_not_a_500(tmp_path, bucket):
    client, _ = agent(tmp_path, [{"path": str(tmp_path / "nowhere"), "bucket": bucket, "name": "gone"}])
    for method, url in (("get", "plan"), ("post", "archive")):
        answer = getattr(client, method)(f"/v1/data/projects/gone/{url}", headers=AUTH)
        assert answer.status_code == 503 and "not a Scipion project" in answer.get_json()["error"]
    state = client.get("/v1/data", headers=AUTH).get_json()["projects"]["gone"]
    assert data_metrics(client)[("scipioncloud_scrape_collector_success", "data")] == 0  # said, not hidden
    assert "not a Scipion project" in state["problem"]


def test_bad_configuration_is_reported_not_fatal(tmp_path):
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.follow"):
        from_dict(agent_config_dict(tmp_path, data={"follow": ["s3://b/p"]}))
    bad = tmp_path / "policy.toml"
    bad.write_text('[[project]]\npath = "/data/p"\nbucket = "b"\nstorage_class = "TAPE"\n')
    app = create_app(from_dict(agent_config_dict(tmp_path, data={"policy_file": str(bad)})), token=TOKEN)
    state = app.test_client().get("/v1/data", headers=AUTH).get_json()
    assert "storage_class must be one of" in state["problem"] and state["projects"] == {}


def test_objects_and_entries_of_earlier_versions_sha256_still_verify(tmp_path, bucket, s3):
    """Movies archived before CRC64NVME carry SHA-256 (composite when multipart) in S3 and a manifest entry
    "checksum_sha256": verify() checks them with SHA-256, and a file with other bytes is never called same."""
    from agent.data import archive
    from agent.s3 import checksums as sums
    from tests.data.test_transfer import put_like_earlier_versions

    movie = make_movie(tmp_path / "old.tif", 11 * MiB, seed=3)
    put_like_earlier_versions(s3, bucket, "archive/old.tif", movie, 5 * MiB)
    got = archive.verify(s3, bucket, "archive/old.tif", movie, movie.stat())
    head = s3.head_object(Bucket=bucket, Key="archive/old.tif", ChecksumMode="ENABLED")
    assert (
        sums.same(got, head["ChecksumSHA256"]) and archive.recorded_checksum({"checksum_sha256": got}) == got
    )

    other = make_movie(tmp_path / "other.tif", 11 * MiB, seed=4)  # same size, other bytes
    with pytest.raises(archive.VerifyError, match="differs"):
        archive.verify(s3, bucket, "archive/old.tif", other, other.stat())
    # a new object (CRC64NVME) verified the same way, and recorded under "checksum"
    s3.put_object(
        Bucket=bucket, Key="archive/new.tif", Body=movie.read_bytes(), ChecksumAlgorithm="CRC64NVME"
    )
    got = archive.verify(s3, bucket, "archive/new.tif", movie, movie.stat())
    assert (
        got
        == s3.head_object(Bucket=bucket, Key="archive/new.tif", ChecksumMode="ENABLED")["ChecksumCRC64NVME"]
    )
    with pytest.raises(archive.VerifyError, match="differs"):
        archive.verify(s3, bucket, "archive/new.tif", other, other.stat())
