"""tests/support/openapi_contract.py, the check that real answers keep the OpenAPI contract, can fail."""

from __future__ import annotations

import pytest

from agent.desktop import OPENAPI as DESKTOP
from agent.openapi import build
from tests.support.openapi_contract import assert_matches

DOCUMENT = build([DESKTOP])
LOGOUT = {
    "status": "restarted",
    "seconds": 1.5,
    "rfb": "RFB 003.008",
    "previous_server_pid": 7,
    "server_pid": 9,
}


def test_a_conforming_answer_passes():
    assert_matches(DOCUMENT, "POST", "/v1/desktop/logout", 200, LOGOUT)
    assert_matches(DOCUMENT, "POST", "/v1/desktop/logout", 409, {"error": "busy", "status": 409})


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, {k: v for k, v in LOGOUT.items() if k != "rfb"}, "'rfb' is a required property"),
        (200, {**LOGOUT, "seconds": "fast"}, "is not of type 'number'"),
        (418, {"error": "teapot", "status": 418}, "answered 418; its operation declares"),
        (409, {"error": "busy"}, "'status' is a required property"),  # the shared Error schema, by $ref
    ],
)
def test_a_broken_answer_is_named(status, body, message):
    with pytest.raises(AssertionError, match=message):
        assert_matches(DOCUMENT, "POST", "/v1/desktop/logout", status, body)


def test_an_undocumented_route_is_named():
    with pytest.raises(AssertionError, match="no operation"):
        assert_matches(DOCUMENT, "GET", "/v1/nowhere", 200, {})


def test_nullable_fields_admit_null_and_nothing_else():
    """OpenAPI 3.0's `nullable` (the volume routes use it) read as schemathesis reads it."""
    from agent.volumes import OPENAPI as VOLUMES

    document = build([VOLUMES])
    volume = {"id": "loop0", "name": "loop0", "path": "/dev/loop0", "size": 1, "type": "loop", "model": None}
    volume |= {"volume_id": None, "state": "blank", "reason": None, "signature": None, "mountpoints": []}
    volume["partitions"] = []
    assert_matches(document, "GET", "/v1/volumes", 200, {"volumes": [volume]})
    with pytest.raises(AssertionError, match="is not of type"):
        assert_matches(document, "GET", "/v1/volumes", 200, {"volumes": [{**volume, "model": 7}]})
