"""Liveness and the API's own description."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from agent import __version__
from agent.openapi import build, operation
from agent.security import public

bp = Blueprint("health", __name__)

ALIVE = {
    "type": "object",
    "required": ["status", "version"],
    "properties": {"status": {"type": "string", "enum": ["ok"]}, "version": {"type": "string"}},
}
DOCUMENT = {
    "type": "object",
    "required": ["openapi", "info", "paths"],
    "properties": {"openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"}},
}
OPENAPI = {
    "/healthz": {"get": operation("Liveness; needs no token", public=True, schema=ALIVE, _200="alive")},
    "/openapi.json": {"get": operation("This OpenAPI 3 document", schema=DOCUMENT, _200="the document")},
}


@bp.get("/healthz")
@public
def healthz():
    return jsonify(status="ok", version=__version__)


@bp.get("/openapi.json")
def openapi():
    return jsonify(build(current_app.config["OPENAPI_FRAGMENTS"]))
