"""Every error the agent answers is JSON with a fitting status, never an HTML page or a traceback."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a route raises on purpose: status, message, and optional details for the client."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def error_response(status: int, message: str, **details: Any):
    body = {"error": message, "status": status, **details}
    return jsonify(body), status


def json_body() -> dict[str, Any]:
    """The request's JSON object; an empty body is {}, anything else malformed is a 400."""
    if not request.get_data(cache=True):
        return {}
    try:
        body = request.get_json(force=True)
    except BadRequest:
        raise ApiError(400, "request body is not valid JSON") from None
    except RecursionError:  # json's C decoder gives up on deep nesting ([[[[...]]]] 30,000 deep)
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, **exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = exc.get_response()
        payload, status = error_response(exc.code or 500, exc.description or exc.name)
        payload.status_code = status
        if "Allow" in response.headers:
            payload.headers["Allow"] = response.headers["Allow"]
        return payload

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the agent's log")
