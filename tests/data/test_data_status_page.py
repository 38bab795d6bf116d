"""The status page's movie panel, in headless Chromium through the desktop role's nginx, with the real agent
behind it: a real Scipion project's aligned movies archived to S3 on 127.0.0.1 (moto server) by the agent,
and the page shows what the agent's /v1/data says (archived, bytes freed, pending)."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.data.conftest import MiB, make_movie
from tests.data.test_archive import policy
from tests.support.desktop import DesktopStack, browser_context
from tests.support.scipion_project import make_project

pytestmark = pytest.mark.integration


def test_status_page_shows_archived_freed_and_pending(tmp_path, aws_env):
    boto3.client("s3").create_bucket(
        Bucket="lab-archive", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    movies = tmp_path / "ebs" / "movies"
    for i in range(3):
        make_movie(movies / f"mov_{i:02d}.tif", 6 * MiB + i * 1001, seed=i)
    project = make_project(tmp_path, "p1", movies, [{}])
    policy_file = tmp_path / "data-policy.toml"
    fields = policy(project, name="p1")
    policy_file.write_text("[[project]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))

    stack = DesktopStack(tmp_path / "desktop", agent_sections={"data": {"policy_file": str(policy_file)}})
    try:
        stack.start()  # the agent inherits this test's environment: S3 is the moto server
        done = stack.agent.request("POST", "/v1/data/projects/p1/archive", json={}).json()
        assert done["failed"] == {} and len(done["archived"]) == 3, done
        state = stack.agent.get("/v1/data").json()["projects"]["p1"]
        assert state["archived"] == 3 and state["pending"] == 0
        with browser_context(stack.login) as context:
            page = context.new_page()
            page.goto(f"https://127.0.0.1:{stack.https_port}/status/")
            row = page.locator("#data tr.data-project[data-project='p1']")
            row.wait_for(timeout=30000)
            assert row.locator(".data-archived").inner_text() == "3 archived"
            freed = f"{state['bytes_freed'] / 2**30:.1f} GiB freed"
            assert row.locator(".data-freed").inner_text() == freed
            assert row.locator(".data-pending").inner_text() == "0 pending"
    finally:
        stack.stop()
