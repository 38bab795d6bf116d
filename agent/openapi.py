"""The OpenAPI 3 document, assembled from the OPENAPI fragment each capability module declares."""

from __future__ import annotations

import copy
import re
from typing import Any

from agent import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def flask_rule_to_openapi(rule: str) -> str:
    """'/v1/prewarm/<job>' -> '/v1/prewarm/{job}' (converters such as <int:x> included)."""
    return re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", rule)


OBJECT = {"type": "object"}  # the 2xx schema of an operation that declares none of its own


def REQUIRED(keys: list[str], **types: str) -> dict:
    """An object answer whose top-level `keys` are always there (types given for some): enough for a client,
    and for schemathesis to catch an answer that lost a field."""
    return {
        "type": "object",
        "required": keys,
        "properties": {key: {"type": kind} for key, kind in types.items()},
    }


def operation(
    summary: str,
    *,
    public: bool = False,
    body: dict | None = None,
    body_required: bool = False,
    schema: dict | None = None,
    schemas: dict[str, dict] | None = None,
    **responses: str,
) -> dict:
    """A short way to write one operation: responses as code='description'; `schema` is the body of every
    2xx answer (`schemas` per code when they differ). build() adds the statuses every route shares."""

    def body_schema(code: int) -> dict:
        if code >= 400:
            return ERROR
        return (schemas or {}).get(str(code)) or schema or OBJECT

    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            code.lstrip("_"): {
                "description": text,
                "content": {"application/json": {"schema": body_schema(int(code.lstrip("_")))}},
            }
            for code, text in (responses or {"_200": "OK"}).items()
        },
    }
    if public:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": body}}}
    return op


# Answers any route may give, whatever it does: the Host check (agent/security.py), the token, and for a
# route that reads a body, malformed JSON and a body over server.max_body_bytes.
SHARED = {"403": "the Host header is not a loopback name (the agent listens on loopback)"}
AUTHED = {"401": "no token, or a wrong one"}
WITH_BODY = {
    "400": "malformed JSON, a value of the wrong type, an unknown field",
    "413": "body over server.max_body_bytes",
}


def _with_shared_statuses(op: dict) -> dict:
    extra = dict(SHARED)
    if op.get("security") != []:
        extra.update(AUTHED)
    if "requestBody" in op:
        extra.update(WITH_BODY)
    responses = op.setdefault("responses", {})
    for code, text in extra.items():
        responses.setdefault(code, {"description": text, "content": {"application/json": {"schema": ERROR}}})
    return op


def build(fragments: list[dict[str, dict]]) -> dict[str, Any]:
    paths: dict[str, dict] = {}
    for fragment in fragments:
        for path, ops in fragment.items():
            item = paths.setdefault(path, {})
            item.update({method: _with_shared_statuses(copy.deepcopy(op)) for method, op in ops.items()})
            names = re.findall(r"{([a-zA-Z_]+)}", path)
            if names:
                item["parameters"] = [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
                ]
    return {
        "openapi": "3.0.3",
        "info": {"title": "ScipionCloud agent", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "status"],
                    "properties": {
                        "error": {"type": "string"},
                        "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    },
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
