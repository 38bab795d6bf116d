"""Answers checked against the agent's own OpenAPI document (GET /openapi.json): the status must be one the
operation declares, and a JSON body must match that status's schema (jsonschema). Schemathesis
(tests/agent/test_openapi_contract.py) checks the answers it can provoke with generated requests; this
checks the answers real scenarios give (a project with aligned movies, a desktop logout), which generated
requests cannot reach.

    assert_matches(document, "POST", "/v1/desktop/logout", 200, body)
    app.test_client_class = ContractClient   # every answer of app.test_client() is checked
    agent = start_agent(..., contract=True)   # every answer of the real agent process is checked
"""

from __future__ import annotations

import re

import jsonschema
from flask.testing import FlaskClient

from agent.openapi import build


def response_schema(document: dict, method: str, path: str, status: int) -> dict | None:
    """The JSON schema the document gives for `status` of `method path`; None for a non-JSON answer."""
    for template, item in document["paths"].items():
        pattern = "^" + re.sub(r"\{[a-zA-Z_]+\}", "[^/]+", template) + "$"
        operation = item.get(method.lower())
        if operation is None or not re.match(pattern, path):
            continue
        answer = operation["responses"].get(str(status))
        if answer is None:
            declared = ", ".join(sorted(operation["responses"]))
            raise AssertionError(f"{method} {template} answered {status}; its operation declares {declared}")
        return answer.get("content", {}).get("application/json", {}).get("schema")
    raise AssertionError(f"{method} {path}: no operation in the OpenAPI document")


def json_schema(schema):
    """An OpenAPI 3.0 schema as JSON Schema: `nullable: true` (which JSON Schema does not know) becomes a
    type that also admits null, as schemathesis reads it."""
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: json_schema(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable") is True and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
        if "enum" in converted:
            converted["enum"] = [*converted["enum"], None]
    return converted


def assert_matches(document: dict, method: str, path: str, status: int, body) -> None:
    schema = response_schema(document, method, path.split("?")[0], status)
    if schema is None:
        return
    # $ref "#/components/..." resolves against the schema's root: give it the document's components.
    rooted = json_schema({**schema, "components": document.get("components", {})})
    try:
        jsonschema.validate(body, rooted)
    except jsonschema.ValidationError as exc:
        raise AssertionError(
            f"{method} {path} {status}: the answer breaks its schema: {exc.message}"
        ) from None


class ContractClient(FlaskClient):
    """Flask's test client, checking every answer of the agent's routes against the app's document."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        request = response.request
        if request.path.startswith("/v1/") and response.is_json:
            document = build(self.application.config["OPENAPI_FRAGMENTS"])
            assert_matches(document, request.method, request.path, response.status_code, response.get_json())
        return response
