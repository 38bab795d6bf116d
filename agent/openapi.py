"""The OpenAPI 3 document, assembled from the OPENAPI fragment each capability module declares."""

from __future__ import annotations

import re
from typing import Any

from agent import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def flask_rule_to_openapi(rule: str) -> str:
    """'/v1/prewarm/<job>' -> '/v1/prewarm/{job}' (converters such as <int:x> included)."""
    return re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", rule)


def operation(summary: str, *, public: bool = False, body: dict | None = None, **responses: str) -> dict:
    """A short way to write one operation: responses as code='description'."""
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            code.lstrip("_"): {
                "description": text,
                "content": {"application/json": {"schema": ERROR if int(code.lstrip("_")) >= 400 else {}}},
            }
            for code, text in (responses or {"_200": "OK"}).items()
        },
    }
    if public:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return op


def build(fragments: list[dict[str, dict]]) -> dict[str, Any]:
    paths: dict[str, dict] = {}
    for fragment in fragments:
        for path, ops in fragment.items():
            item = paths.setdefault(path, {})
            item.update(ops)
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
                    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
