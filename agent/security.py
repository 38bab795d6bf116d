"""Who may talk to the agent: a bearer token on every route but the public ones, and, when bound to
loopback, only requests addressed to a loopback name (a DNS-rebinding page cannot reach us)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, current_app, request

from agent.errors import error_response

F = TypeVar("F", bound=Callable)
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def public(view: F) -> F:
    """Mark a view as reachable without the token (liveness only)."""
    view.scipioncloud_public = True  # type: ignore[attr-defined]
    return view


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header: 'a:80' -> 'a', '[::1]:80' -> '::1'."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def init_app(app: Flask, token: str, bind_host: str) -> None:
    expected = ("Bearer " + token).encode()
    loopback_only = is_loopback(bind_host)

    @app.before_request
    def _guard():
        if loopback_only and not is_loopback(host_of(request.headers.get("Host", ""))):
            return error_response(
                403, "the agent listens on loopback and answers only to a loopback Host header"
            )
        view = current_app.view_functions.get(request.endpoint or "")
        if view is not None and getattr(view, "scipioncloud_public", False):
            return None
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            response, status = error_response(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="scipioncloud-agent"'
            return response, status
        return None
