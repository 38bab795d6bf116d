"""Auth, Host check, error bodies and the OpenAPI document, through Flask's test client."""

import re

import pytest

from agent.app import create_app
from agent.config import from_dict
from agent.openapi import flask_rule_to_openapi
from tests.conftest import TOKEN, agent_config_dict


def test_healthz_needs_no_token(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["status"] == "ok"


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "])
def test_routes_need_the_exact_token(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/openapi.json", headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "missing or wrong bearer token", "status": 401}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_right_token_passes(client, auth):
    assert client.get("/openapi.json", headers=auth).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "10.0.0.1:9777"])
def test_loopback_agent_refuses_foreign_host_header(client, auth, host):
    response = client.get("/healthz", headers={**auth, "Host": host})
    assert response.status_code == 403
    assert "loopback" in response.json["error"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:9777", "[::1]:9777", "127.0.0.2"])
def test_loopback_host_headers_pass(client, auth, host):
    assert client.get("/healthz", headers={**auth, "Host": host}).status_code == 200


def test_agent_bound_elsewhere_accepts_any_host(tmp_path, auth):
    config = from_dict(agent_config_dict(tmp_path, server={"bind": "0.0.0.0:9777"}))
    client = create_app(config, token=TOKEN).test_client()
    assert client.get("/healthz", headers={"Host": "ip-10-0-0-1.ec2.internal"}).status_code == 200


def test_unknown_route_is_json_404(client, auth):
    response = client.get("/v1/nothing", headers=auth)
    assert response.status_code == 404
    assert response.is_json and response.json["status"] == 404 and response.json["error"]


def test_wrong_method_is_json_405(client, auth):
    response = client.delete("/healthz", headers=auth)
    assert response.status_code == 405
    assert response.is_json and "GET" in response.headers["Allow"]


def test_unknown_route_without_token_is_401_not_404(client):
    assert client.get("/v1/nothing").status_code == 401


def test_openapi_describes_every_route(app, client, auth):
    document = client.get("/openapi.json", headers=auth).json
    assert document["openapi"].startswith("3.")
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = flask_rule_to_openapi(rule.rule)
        assert path in document["paths"], f"{rule.rule} is missing from /openapi.json"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in document["paths"][path], f"{method} {rule.rule} undocumented"
    for path in document["paths"]:
        for name in re.findall(r"{(\w+)}", path):
            assert any(p["name"] == name for p in document["paths"][path]["parameters"])


def test_every_json_answer_has_its_own_schema(client, auth):
    """No 2xx JSON answer is documented as a bare object: schemathesis and tests/support/openapi_contract.py
    can only catch a lost field where the document names the fields."""
    document = client.get("/openapi.json", headers=auth).json
    generic = [
        f"{method.upper()} {path} {code}"
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if isinstance(op, dict) and "responses" in op
        for code, answer in op["responses"].items()
        if code.startswith("2")
        and answer.get("content", {}).get("application/json", {}).get("schema", {}).keys() <= {"type"}
        and "application/json" in answer.get("content", {})
    ]
    assert generic == []


def test_openapi_marks_only_healthz_public(client, auth):
    document = client.get("/openapi.json", headers=auth).json
    public = [
        p
        for p, ops in document["paths"].items()
        for op in ops.values()
        if isinstance(op, dict) and op.get("security") == []
    ]
    assert public == ["/healthz"]


def test_unexpected_error_is_json_500_without_traceback(app, auth):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    response = app.test_client().get("/boom", headers=auth)
    assert response.status_code == 500
    assert response.json["error"].startswith("internal error (RuntimeError)")
    assert "Traceback" not in response.get_data(as_text=True)
    assert "secret detail" not in response.get_data(as_text=True)
